use std::fmt;

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

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
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

    proptest::proptest! {
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
