//! Errors as people read them: one line with every cause.

/// An error and its sources on one line. Layered errors say little at the
/// top (tonic's transport error alone says only "transport error"); the
/// reason is at the bottom.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut next = e.source();
    let mut last = s.clone();
    while let Some(cause) = next {
        // Layers often repeat their cause's words; say them once.
        let text = cause.to_string();
        if text != last {
            s.push_str(": ");
            s.push_str(&text);
        }
        next = cause.source();
        last = text;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Layer(&'static str, #[source] Option<Box<Layer>>);

    #[test]
    fn every_cause_is_said_once() {
        let e = Layer(
            "transport error",
            Some(Box::new(Layer(
                "connection refused",
                Some(Box::new(Layer("connection refused", None))),
            ))),
        );
        assert_eq!(chain(&e), "transport error: connection refused");
        assert_eq!(chain(&Layer("alone", None)), "alone");
    }
}
