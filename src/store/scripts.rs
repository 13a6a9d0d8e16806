//! The Lua scripts of `migrations-lua/`, compiled in. `Script::invoke_async` runs them by SHA and
//! loads them when Redis answers NOSCRIPT (after a restart or a failover).

use std::sync::LazyLock;

use redis::Script;

pub static PUBLISH: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../migrations-lua/publish.lua")));
pub static EPOCH: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../migrations-lua/epoch.lua")));
pub static MIGRATE_ZSET: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../migrations-lua/migrate_zset.lua")));
