//! How chatd shows an error: with its causes.

use std::error::Error;
use std::fmt;

/// Displays an error followed by each of its causes (`outer: cause: root cause`), so a log line
/// or a message shows why, not only what, failed. A cause whose text is the same as the one
/// before it is shown once: some errors repeat their source in their own text.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        f.write_str(&shown)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            let text = e.to_string();
            if text != shown {
                write!(f, ": {text}")?;
                shown = text;
            }
            cause = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Layer(&'static str, #[source] Option<Box<Layer>>);

    fn layers(texts: &[&'static str]) -> Layer {
        texts
            .iter()
            .rev()
            .fold(None, |inner, text| Some(Layer(text, inner.map(Box::new))))
            .unwrap()
    }

    #[test]
    fn an_error_is_shown_with_each_cause_once() {
        let e = layers(&[
            "opening the outbox",
            "disk I/O error",
            "disk I/O error",
            "EIO",
        ]);
        assert_eq!(
            Chain(&e).to_string(),
            "opening the outbox: disk I/O error: EIO"
        );
        assert_eq!(Chain(&layers(&["alone"])).to_string(), "alone");
    }
}
