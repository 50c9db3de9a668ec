//! History paging: offsets from the newest, cursors both ways, filters.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::helpers::{api, spawn_app, token};

async fn seed(app: &crate::helpers::TestApp, c: &str, n: i64) {
    // Straight into the database keeps the test fast; seqs follow the server's rules.
    sqlx::query(
        r#"
        WITH up AS (UPDATE conversations SET last_seq = $2, message_count = $2, last_message_at = now() WHERE id = $1)
        INSERT INTO messages (id, conversation_id, seq, sender_id, sender_type, text, created_at)
        SELECT gen_random_uuid(), $1, s, CASE WHEN s % 2 = 0 THEN 'alice' ELSE 'bob' END, 'user',
               'message ' || s, now() - make_interval(secs => ($2 - s))
        FROM generate_series(1, $2) s
        "#,
    )
    .bind(uuid::Uuid::parse_str(c).unwrap())
    .bind(n)
    .execute(&app.db)
    .await
    .unwrap();
}

fn seqs(page: &Value) -> Vec<i64> {
    page["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn paging_a_250_message_conversation_by_offset_and_cursor_has_no_gap_or_duplicate() {
    let app = spawn_app().await;
    let c = app.conversation("alice", &["bob"]).await;
    seed(&app, &c, 250).await;
    let t = token("alice");
    let base = api(&format!("/messages/conversations/{c}"));

    // Newest first by offset; each page oldest→newest.
    let mut seen = vec![];
    let mut offset = 0;
    loop {
        let (_, page) = app
            .get(&format!("{base}?limit=40&offset={offset}"), &t)
            .await;
        let s = seqs(&page);
        assert!(s.windows(2).all(|w| w[0] + 1 == w[1]), "{s:?}");
        assert_eq!(page["data"]["total"], 250);
        seen.splice(0..0, s.iter().copied());
        offset += 40;
        if page["data"]["has_more"] == false {
            break;
        }
    }
    assert_eq!(seen, (1..=250).collect::<Vec<_>>());

    // Backwards with before_seq.
    let mut back = BTreeSet::new();
    let mut cursor: Option<i64> = None;
    loop {
        let url = match cursor {
            Some(b) => format!("{base}?limit=50&before_seq={b}"),
            None => format!("{base}?limit=50"),
        };
        let (_, page) = app.get(&url, &t).await;
        let s = seqs(&page);
        for x in &s {
            assert!(back.insert(*x), "duplicate {x}");
        }
        if page["data"]["has_more"] == false {
            break;
        }
        cursor = s.first().copied();
    }
    assert_eq!(back.len(), 250);

    // Forwards with after_seq.
    let mut fwd: Vec<i64> = vec![];
    let mut after = 0;
    loop {
        let (_, page) = app
            .get(&format!("{base}?limit=100&after_seq={after}"), &t)
            .await;
        let s = seqs(&page);
        fwd.extend(&s);
        if page["data"]["has_more"] == false {
            break;
        }
        after = *s.last().unwrap();
    }
    assert_eq!(fwd, (1..=250).collect::<Vec<_>>());
}

#[tokio::test]
async fn filters_by_sender_and_date_page_correctly() {
    let app = spawn_app().await;
    let c = app.conversation("alice", &["bob"]).await;
    seed(&app, &c, 30).await;
    let t = token("alice");
    let base = api(&format!("/messages/conversations/{c}"));
    let (_, page) = app
        .get(&format!("{base}?sender_filter=alice&limit=5"), &t)
        .await;
    assert_eq!(seqs(&page), vec![22, 24, 26, 28, 30]);
    assert_eq!(page["data"]["total"], 15);
    assert_eq!(page["data"]["has_more"], true);
    let (_, page) = app
        .get(&format!("{base}?sender_filter=alice&limit=5&offset=5"), &t)
        .await;
    assert_eq!(seqs(&page), vec![12, 14, 16, 18, 20]);
    let (_, page) = app
        .get(
            &format!("{base}?sender_filter=bob&after_seq=20&limit=3"),
            &t,
        )
        .await;
    assert_eq!(seqs(&page), vec![21, 23, 25]);
    let (_, all) = app.get(&format!("{base}?limit=100"), &t).await;
    let tenth = all["data"]["items"][9]["created_at"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, page) = app
        .get(
            &format!("{base}?end_date={}", tenth.replace('+', "%2B")),
            &t,
        )
        .await;
    assert_eq!(page["data"]["total"], 10);
    let (_, page) = app
        .get(
            &format!("{base}?start_date={}&limit=100", tenth.replace('+', "%2B")),
            &t,
        )
        .await;
    assert_eq!(seqs(&page).first(), Some(&10));
}

#[tokio::test]
async fn an_empty_conversation_and_an_offset_past_the_start_give_empty_pages() {
    let app = spawn_app().await;
    let c = app.conversation("alice", &[]).await;
    let t = token("alice");
    let (_, page) = app
        .get(&api(&format!("/messages/conversations/{c}")), &t)
        .await;
    assert_eq!(page["data"]["items"], serde_json::json!([]));
    assert_eq!(page["data"]["has_more"], false);
    app.send("alice", &c, "one").await;
    let (_, page) = app
        .get(&api(&format!("/messages/conversations/{c}?offset=5")), &t)
        .await;
    assert_eq!(page["data"]["items"], serde_json::json!([]));
    assert_eq!(page["data"]["total"], 1);
}
