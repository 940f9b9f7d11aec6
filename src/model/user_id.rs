use std::borrow::Cow;
use std::fmt;

use utoipa::openapi::{ObjectBuilder, RefOr, Schema, Type};

/// A user id as the contract defines it: a non-empty UTF-8 string of at most 128 bytes without
/// `,` (it separates ids in query strings) or control characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidUserId {
    #[error("a user id must not be empty")]
    Empty,
    #[error("a user id must be at most {} bytes", UserId::MAX_BYTES)]
    TooLong,
    #[error("a user id must not contain ','")]
    Comma,
    #[error("a user id must not contain control characters")]
    ControlCharacter,
}

impl UserId {
    pub const MAX_BYTES: usize = 128;

    pub fn parse(id: impl Into<String>) -> Result<Self, InvalidUserId> {
        let id = id.into();
        if id.is_empty() {
            Err(InvalidUserId::Empty)
        } else if id.len() > Self::MAX_BYTES {
            Err(InvalidUserId::TooLong)
        } else if id.contains(',') {
            Err(InvalidUserId::Comma)
        } else if id.chars().any(char::is_control) {
            Err(InvalidUserId::ControlCharacter)
        } else {
            Ok(Self(id))
        }
    }

    /// The user ids `/openapi.json` describes, as an unanchored pattern: up to 128 ASCII
    /// characters, or up to 32 of any (none takes more than 4 bytes) — never more than 128
    /// bytes, because JSON Schema's lengths count characters and a validator or fuzzer would
    /// otherwise take 128 four-byte characters for an id. A longer non-ASCII id within 128
    /// bytes is valid too; the schema's description says so. Also the building block of
    /// comma-separated lists of ids.
    pub fn schema_pattern() -> String {
        let (ascii, any) = (Self::MAX_BYTES, Self::MAX_BYTES / 4);
        format!(
            "(?:[\\u0020-\\u002B\\u002D-\\u007E]{{1,{ascii}}}\
             |[^,\\u0000-\\u001F\\u007F-\\u009F]{{1,{any}}})"
        )
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl utoipa::PartialSchema for UserId {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(Self::MAX_BYTES))
            .pattern(Some(format!("^{}$", Self::schema_pattern())))
            .description(Some(
                "A user id: a non-empty UTF-8 string of at most 128 bytes, without `,` or \
                 control characters. The pattern admits up to 128 ASCII characters or up to 32 \
                 of any; a longer non-ASCII id within 128 bytes is valid too.",
            ))
            .examples(["alice"])
            .into()
    }
}

impl utoipa::ToSchema for UserId {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("UserId")
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_and_unicode_ids() {
        assert_eq!(UserId::parse("alice").unwrap().as_str(), "alice");
        assert!(UserId::parse("élodie 🦀").is_ok());
        assert!(UserId::parse("a".repeat(128)).is_ok());
    }

    #[test]
    fn refuses_what_the_contract_forbids() {
        assert_eq!(UserId::parse(""), Err(InvalidUserId::Empty));
        assert_eq!(UserId::parse("a".repeat(129)), Err(InvalidUserId::TooLong));
        // 43 three-byte characters are 129 bytes: the limit is in bytes, not characters.
        assert_eq!(UserId::parse("€".repeat(43)), Err(InvalidUserId::TooLong));
        assert_eq!(UserId::parse("a,b"), Err(InvalidUserId::Comma));
        assert_eq!(UserId::parse("a\nb"), Err(InvalidUserId::ControlCharacter));
        assert_eq!(
            UserId::parse("a\u{7f}"),
            Err(InvalidUserId::ControlCharacter)
        );
    }

    fn schema() -> jsonschema::Validator {
        let schema = serde_json::to_value(<UserId as utoipa::PartialSchema>::schema()).unwrap();
        jsonschema::validator_for(&schema).expect("a valid JSON Schema")
    }

    #[test]
    fn the_schema_admits_valid_ids_only() {
        let schema = schema();
        for valid in ["alice", "élodie 🦀", &"a".repeat(128), &"🦀".repeat(32)] {
            assert!(schema.is_valid(&valid.into()), "{valid:?}");
        }
        // 33 four-byte characters are 132 bytes; 129 ASCII ones, 129 bytes.
        for invalid in [
            "",
            "a,b",
            "a\nb",
            "a\u{85}",
            &"a".repeat(129),
            &"🦀".repeat(33),
        ] {
            assert!(!schema.is_valid(&invalid.into()), "{invalid:?}");
        }
    }

    proptest::proptest! {
        /// What the document calls a user id, chatd takes for one: a fuzzer that follows the
        /// document never sends an id chatd refuses. (The converse holds for ASCII ids and ids
        /// of at most 32 characters, which the test above samples.)
        #[test]
        fn what_the_schema_admits_parses(id in "\\PC{0,40}|[\\x00-\\x7f]{0,140}|\\PC{120,140}") {
            if schema().is_valid(&id.as_str().into()) {
                proptest::prop_assert!(UserId::parse(id.as_str()).is_ok(), "{:?}", id);
            }
            let ascii_or_short = id.is_ascii() || id.chars().count() <= UserId::MAX_BYTES / 4;
            if ascii_or_short && UserId::parse(id.as_str()).is_ok() {
                proptest::prop_assert!(schema().is_valid(&id.as_str().into()), "{:?}", id);
            }
        }

        #[test]
        fn parsing_never_panics_and_accepts_exactly_the_contract(id in "\\PC{0,70}|[\\x00-\\x7f]{0,140}") {
            let valid = !id.is_empty()
                && id.len() <= UserId::MAX_BYTES
                && !id.contains(',')
                && !id.chars().any(char::is_control);
            proptest::prop_assert_eq!(UserId::parse(id.as_str()).is_ok(), valid);
        }
    }
}
