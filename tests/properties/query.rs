//! The upgrade query (`since`, `epoch`, `recent`): any query is a target or a refusal, never
//! a panic; whole numbers and plain epochs are read back exactly; anything else in those
//! three is refused; other keys are ignored.

use proptest::prelude::*;
use roomcast::broker::Resume;
use roomcast::http::Target;
use roomcast::http::route::chat_target;

fn resume_of(query: &str) -> Result<Option<Resume>, &'static str> {
    match chat_target("lobby", query)? {
        Target::Chat { room, resume } => {
            assert_eq!(room, "lobby");
            Ok(resume)
        }
        Target::Echo => panic!("a chat query made an echo target"),
    }
}

/// A value that is not a whole number (digits only, within u64).
fn not_whole() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[+-][0-9]{1,5}",
        "[0-9]{0,5}[^0-9&=][0-9]{0,5}",
        "[1-9][0-9]{20,29}",
        "1844674407370955161[6-9]",
    ]
}

fn epoch() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,64}"
}

fn not_epoch() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[A-Za-z0-9._-]{65,80}",
        "[A-Za-z0-9._-]{0,10}[^A-Za-z0-9._&=-][A-Za-z0-9._-]{0,10}",
    ]
}

/// Pairs the parser ignores.
fn noise() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        prop_oneof![
            "[a-df-qt-z][a-z]{0,6}=[^&]{0,10}".prop_map(String::from),
            Just(String::new()),
            Just("flag".to_string()),
        ],
        0..4,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_query_is_a_target_or_a_refusal(query in "[^#]{0,80}") {
        let _ = chat_target("lobby", &query);
    }

    #[test]
    fn since_epoch_and_recent_are_read_back(
        since: Option<u64>,
        epoch in prop::option::of(epoch()),
        recent: Option<u64>,
        noise in noise(),
    ) {
        let mut pairs = noise;
        if let Some(since) = since {
            pairs.push(format!("since={since}"));
        }
        if let Some(epoch) = &epoch {
            pairs.push(format!("epoch={epoch}"));
        }
        if let Some(recent) = recent {
            pairs.push(format!("recent={recent}"));
        }
        let expected = match (since, recent) {
            (Some(since), _) => Some(Resume::Since { since, epoch }),
            (None, Some(count)) => Some(Resume::Recent(count)),
            (None, None) => None,
        };
        prop_assert_eq!(resume_of(&pairs.join("&")), Ok(expected));
    }

    #[test]
    fn anything_else_in_since_recent_or_epoch_is_refused(
        key in prop::sample::select(vec!["since", "recent"]),
        bad_number in not_whole(),
        bad_epoch in not_epoch(),
        noise in noise(),
    ) {
        let mut pairs = noise.clone();
        pairs.push(format!("{key}={bad_number}"));
        prop_assert!(resume_of(&pairs.join("&")).is_err(), "{}={}", key, bad_number);
        let mut pairs = noise;
        pairs.push(format!("epoch={bad_epoch}"));
        prop_assert!(resume_of(&pairs.join("&")).is_err(), "epoch={}", bad_epoch);
    }
}
