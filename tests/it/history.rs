//! `GET /notifications`: paging through a member's retained history.

use serde_json::{Value, json};

use crate::support::{RedisServer, TestApp, token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_through_history_oldest_first() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.publish("42", json!({ "i": i })).await);
    }
    app.publish("43", json!("someone else")).await;
    let get = |query: String| {
        let request = app
            .client
            .get(format!("{}/notifications{query}", app.url))
            .bearer_auth(token("42"));
        async move { request.send().await.unwrap() }
    };
    let first: Value = get("?limit=2".into()).await.json().await.unwrap();
    let items = first["notifications"].as_array().unwrap();
    assert_eq!(
        items
            .iter()
            .map(|n| n["id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ids[..2]
    );
    assert_eq!(items[0]["content"], json!({"i": 0}));
    assert_eq!(items[0]["member_id"], "42");
    assert_eq!(first["next"], ids[1].as_str());

    let second: Value = get(format!("?after={}&limit=3", ids[1]))
        .await
        .json()
        .await
        .unwrap();
    let items = second["notifications"].as_array().unwrap();
    assert_eq!(
        items
            .iter()
            .map(|n| n["id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ids[2..]
    );
    assert_eq!(second["next"], Value::Null);

    for bad in ["?after=x", "?limit=0", "?limit=1001", "?limit=ten"] {
        let response = get(bad.into()).await;
        assert_eq!(response.status(), 400, "{bad}");
        assert_eq!(
            response.json::<Value>().await.unwrap()["error"],
            "bad_request"
        );
    }
    let anonymous = app
        .client
        .get(format!("{}/notifications", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    app.stop().await;
}
