use super::UserId;

/// A channel is the set of its participants: sorted, without duplicates, so that
/// `["bob","alice"]` and `["alice","bob","alice"]` name the same channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Channel(Vec<UserId>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("participants must not be empty")]
    Empty,
    #[error("a channel has at most {max} participants, this one has {count}")]
    TooMany { count: usize, max: usize },
}

impl Channel {
    pub fn new(mut participants: Vec<UserId>, max: usize) -> Result<Self, ChannelError> {
        participants.sort_unstable();
        participants.dedup();
        match participants.len() {
            0 => Err(ChannelError::Empty),
            count if count > max => Err(ChannelError::TooMany { count, max }),
            _ => Ok(Self(participants)),
        }
    }

    pub fn contains(&self, user: &UserId) -> bool {
        self.0.binary_search(user).is_ok()
    }

    pub fn participants(&self) -> &[UserId] {
        &self.0
    }

    /// The channel's stored key: the canonical ids joined by `,`, which no id may contain,
    /// so two different channels never share a key.
    pub fn key(&self) -> String {
        let ids: Vec<&str> = self.0.iter().map(UserId::as_str).collect();
        ids.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<UserId> {
        names.iter().map(|n| UserId::parse(*n).unwrap()).collect()
    }

    #[test]
    fn order_and_duplicates_do_not_matter() {
        let a = Channel::new(ids(&["bob", "alice"]), 10).unwrap();
        let b = Channel::new(ids(&["alice", "bob", "alice"]), 10).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.key(), "alice,bob");
    }

    #[test]
    fn a_channel_of_one_is_allowed() {
        let notes = Channel::new(ids(&["alice"]), 10).unwrap();
        assert!(notes.contains(&UserId::parse("alice").unwrap()));
        assert!(!notes.contains(&UserId::parse("bob").unwrap()));
    }

    #[test]
    fn size_is_counted_after_removing_duplicates() {
        assert_eq!(Channel::new(vec![], 10), Err(ChannelError::Empty));
        assert!(Channel::new(ids(&["a", "b", "a"]), 2).is_ok());
        assert_eq!(
            Channel::new(ids(&["a", "b", "c"]), 2),
            Err(ChannelError::TooMany { count: 3, max: 2 })
        );
    }

    proptest::proptest! {
        #[test]
        fn any_order_or_repetition_names_the_same_sorted_channel(
            names in proptest::collection::vec("[a-e]{1,3}", 1..12),
            seed in proptest::prelude::any::<u64>(),
        ) {
            let mut shuffled = names.clone();
            shuffled.rotate_left((seed as usize) % names.len());
            shuffled.extend(names.iter().take((seed % 3) as usize).cloned());
            let a = Channel::new(ids(&names.iter().map(String::as_str).collect::<Vec<_>>()), 100).unwrap();
            let b = Channel::new(ids(&shuffled.iter().map(String::as_str).collect::<Vec<_>>()), 100).unwrap();
            proptest::prop_assert_eq!(&a, &b);
            proptest::prop_assert!(a.participants().windows(2).all(|w| w[0] < w[1]));
        }
    }
}
