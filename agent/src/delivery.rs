//! Delivering one body to a sink piece by piece: a piece the sink finds too large (413) is
//! split in two halves (`logship_wire::split_file`), each delivered in order, down to
//! single lines. The sender (retrying until answered, dead-lettering what is refused) and
//! the dead-letter replay (a few tries, then report) share this loop; each says in its
//! [`Deliver`] what an attempt is and what a line too large for the sink becomes.

use std::sync::Arc;

/// How one attempt at one piece ended.
#[derive(Debug)]
pub(crate) enum Step<E> {
    /// Delivered, or dealt with (a refused piece kept as a dead letter).
    Done,
    /// The sink takes bodies smaller than this one.
    TooLarge,
    /// Stop here: the remaining pieces are not delivered.
    Failed(E),
}

/// What delivering means to a caller.
pub(crate) trait Deliver {
    type Error;
    /// One attempt at `piece`.
    async fn attempt(&mut self, piece: &Arc<Vec<u8>>) -> Step<Self::Error>;
    /// `piece` is a single line larger than the sink accepts.
    async fn unsplittable(&mut self, piece: &Arc<Vec<u8>>) -> Result<(), Self::Error>;
}

/// Delivers `body`, splitting it on [`Step::TooLarge`]; stops at the first failure.
pub(crate) async fn split_on_too_large<D: Deliver>(
    body: Arc<Vec<u8>>,
    d: &mut D,
) -> Result<(), D::Error> {
    let mut stack = vec![body];
    while let Some(piece) = stack.pop() {
        match d.attempt(&piece).await {
            Step::Done => {}
            Step::Failed(e) => return Err(e),
            Step::TooLarge => match logship_wire::split_file(&piece) {
                Some((first, second)) => {
                    stack.push(Arc::new(second));
                    stack.push(Arc::new(first));
                }
                None => d.unsplittable(&piece).await?,
            },
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink taking bodies of at most `max` lines, recording what it took.
    struct Small {
        max: usize,
        took: Vec<Vec<u64>>,
        unsplittable: usize,
    }

    impl Deliver for Small {
        type Error = ();
        async fn attempt(&mut self, piece: &Arc<Vec<u8>>) -> Step<()> {
            let b = logship_wire::compact::decode(piece).expect("decodes");
            if b.lines.len() > self.max {
                return Step::TooLarge;
            }
            self.took.push(b.lines.iter().map(|l| l.number).collect());
            Step::Done
        }
        async fn unsplittable(&mut self, _: &Arc<Vec<u8>>) -> Result<(), ()> {
            self.unsplittable += 1;
            Ok(())
        }
    }

    fn body(lines: u64) -> Arc<Vec<u8>> {
        let mut w = logship_wire::compact::Writer::new("h", "/f", "g", 0);
        for i in 0..lines {
            w.push(format!("line {i}").as_bytes(), false);
        }
        Arc::new(w.finish())
    }

    #[tokio::test]
    async fn a_body_too_large_goes_in_halves_in_order() {
        let mut s = Small {
            max: 2,
            took: Vec::new(),
            unsplittable: 0,
        };
        split_on_too_large(body(7), &mut s)
            .await
            .expect("delivered");
        let all: Vec<u64> = s.took.concat();
        assert_eq!(all, (0..7).collect::<Vec<u64>>());
        assert!(s.took.iter().all(|p| p.len() <= 2));
        let mut none = Small {
            max: 0,
            took: Vec::new(),
            unsplittable: 0,
        };
        split_on_too_large(body(3), &mut none)
            .await
            .expect("handled");
        assert_eq!(none.unsplittable, 3, "every single line is too large");
    }
}
