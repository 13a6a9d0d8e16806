//! The Lua scripts of `migrations-lua/`, compiled in. `Script::invoke_async` runs them by SHA and
//! loads them when Redis answers NOSCRIPT (after a restart or a failover).

use std::sync::LazyLock;

use redis::Script;

/// The dataset-epoch functions the scripts that meet a dataset share (a Lua prelude, not a
/// script).
macro_rules! with_epoch_prelude {
    ($file:literal) => {
        concat!(
            include_str!("../../migrations-lua/_epoch.lua"),
            "\n",
            include_str!(concat!("../../migrations-lua/", $file))
        )
    };
}

/// The epoch prelude and the read-state one (ordinals, exact counts), for the scripts that count.
macro_rules! with_read_prelude {
    ($file:literal) => {
        concat!(
            include_str!("../../migrations-lua/_epoch.lua"),
            "\n",
            include_str!("../../migrations-lua/_read.lua"),
            "\n",
            include_str!(concat!("../../migrations-lua/", $file))
        )
    };
}

/// `publish.lua` as sent: publishes on their own connections send it by source after a NOSCRIPT
/// (`store/group.rs`).
pub const PUBLISH_SOURCE: &str = with_read_prelude!("publish.lua");
pub static PUBLISH: LazyLock<Script> = LazyLock::new(|| Script::new(PUBLISH_SOURCE));
pub static READ: LazyLock<Script> = LazyLock::new(|| Script::new(with_read_prelude!("read.lua")));
pub static UNREAD: LazyLock<Script> =
    LazyLock::new(|| Script::new(with_read_prelude!("unread.lua")));
/// `epoch.lua` as sent: the live reader loads it itself on its own connection (`store/wire.rs`).
pub const EPOCH_SOURCE: &str = with_epoch_prelude!("epoch.lua");
pub static EPOCH: LazyLock<Script> = LazyLock::new(|| Script::new(EPOCH_SOURCE));
/// `replay.lua` as sent: replays on their own connections send it by source when Redis may not
/// hold it (`store/wire.rs`).
pub const REPLAY_SOURCE: &str = with_read_prelude!("replay.lua");
pub static REPLAY: LazyLock<Script> = LazyLock::new(|| Script::new(REPLAY_SOURCE));
pub static MIGRATE_ZSET: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../migrations-lua/migrate_zset.lua")));
