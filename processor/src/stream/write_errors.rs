//! What a failed write means, decided once: whether trying again can help
//! (transient), whether some records of the batch can never be stored
//! (permanent: isolate them and store the rest) or whether the process must
//! stop (the schema is wrong). Also how a database error is described in
//! logs and dead letters, and the bisection that finds the records a
//! permanent error is about.

use std::error::Error as StdError;
use std::future::Future;

use tokio_postgres::error::DbError;

/// What to do about a failed write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Retry the same batch after a pause: the cause (connection loss, a
    /// serialization failure, a deadlock, an overloaded or restarting
    /// server, the dead-letter topic being down) can go away by itself.
    Transient,
    /// Some records of the batch can never be stored (a data exception, a
    /// constraint violation other than the handled key conflict): retrying
    /// fails the same way forever, so they are found and dead-lettered and
    /// the rest commits.
    Permanent,
    /// The database does not have the schema this processor expects
    /// (SQLSTATE class 42): no batch can commit; stop.
    Fatal,
}

/// Classifies a five-character SQLSTATE.
///
/// Codes outside the listed classes are transient: retrying something
/// unexpected is how the processor always behaved, and it stays visible
/// through the retry counter and the log line naming the code.
pub fn classify_sqlstate(code: &str) -> ErrorClass {
    match code.get(..2).unwrap_or(code) {
        // Syntax error or access rule violation: undefined table or column,
        // missing privilege.
        "42" => ErrorClass::Fatal,
        // Data exception (numeric overflow, invalid text, value too long)
        // and integrity constraint violation (the handled key conflict
        // never raises: the insert skips it with ON CONFLICT).
        "22" | "23" => ErrorClass::Permanent,
        // Program limit exceeded: a row or index entry too large.
        "54" => ErrorClass::Permanent,
        // 08 connection exception, 40 transaction rollback (40001
        // serialization failure, 40P01 deadlock), 53 insufficient
        // resources, 57 operator intervention (shutdown, cancel), and
        // anything else.
        _ => ErrorClass::Transient,
    }
}

/// The class of a database error; errors without a SQLSTATE (the
/// connection closed, a timeout in the driver) are transient.
pub fn classify_database(error: &tokio_postgres::Error) -> ErrorClass {
    error
        .code()
        .map_or(ErrorClass::Transient, |code| classify_sqlstate(code.code()))
}

/// The first PostgreSQL error in `error`'s source chain, the error itself
/// included.
pub fn database_cause<'a>(
    error: &'a (dyn StdError + 'static),
) -> Option<&'a tokio_postgres::Error> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(database) = error.downcast_ref::<tokio_postgres::Error>() {
            return Some(database);
        }
        current = error.source();
    }
    None
}

/// A server-reported error's SQLSTATE and text, as logs and dead-letter
/// headers carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseFailure {
    pub sqlstate: String,
    /// The message, with the server's detail and hint when it gave them.
    pub message: String,
}

impl DatabaseFailure {
    pub fn of(error: &tokio_postgres::Error) -> Option<Self> {
        error.as_db_error().map(Self::from_db)
    }

    fn from_db(error: &DbError) -> Self {
        let mut message = error.message().to_owned();
        if let Some(detail) = error.detail() {
            message.push_str(" (");
            message.push_str(detail);
            message.push(')');
        }
        if let Some(hint) = error.hint() {
            message.push_str("; hint: ");
            message.push_str(hint);
        }
        Self {
            sqlstate: error.code().code().to_owned(),
            message,
        }
    }
}

impl std::fmt::Display for DatabaseFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SQLSTATE {}: {}", self.sqlstate, self.message)
    }
}

/// Describes a database error with its SQLSTATE and message.
/// `tokio_postgres::Error`'s own Display says only "db error".
pub fn describe(error: &tokio_postgres::Error) -> String {
    match DatabaseFailure::of(error) {
        Some(failure) => failure.to_string(),
        None => match error.source() {
            Some(source) => format!("{error}: {source}"),
            None => error.to_string(),
        },
    }
}

/// " [SQLSTATE …: …]" when `error`'s source chain holds a server-reported
/// error, for wrapping errors whose own text does not name it.
pub fn database_suffix(error: &(dyn StdError + 'static)) -> String {
    database_cause(error)
        .and_then(DatabaseFailure::of)
        .map(|failure| format!(" [{failure}]"))
        .unwrap_or_default()
}

/// How one probe of a set of records went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe<F> {
    /// The records can be stored together.
    Stored,
    /// They cannot, permanently; `F` says why.
    Unstorable(F),
}

/// Finds the records that make a write fail permanently, by trying
/// halves of the failing set (each probe a fresh transaction that is rolled
/// back) until the failing sets are single records.
///
/// `items` are the candidates, in batch order; `probe` tries a subset. The
/// answer holds each unstorable item with the failure of its single probe.
/// A set that fails while both its halves are stored on their own (the
/// records fail only together) is returned whole with that failure: storing
/// the rest matters more than keeping such a set, and the dead letters keep
/// its records for an operator to re-drive.
///
/// A transient error from any probe ends the search with that error; the
/// caller retries the batch and searches again.
pub async fn bisect<T, F, E, P, Fut>(items: Vec<T>, mut probe: P) -> Result<Vec<(T, F)>, E>
where
    T: Clone,
    F: Clone,
    P: FnMut(Vec<T>) -> Fut,
    Fut: Future<Output = Result<Probe<F>, E>>,
{
    let mut unstorable = Vec::new();
    // Failing sets still to split, with their failure; depth-first, so the
    // answer comes out in batch order.
    let failure = match probe(items.clone()).await? {
        Probe::Stored => return Ok(unstorable),
        Probe::Unstorable(failure) => failure,
    };
    let mut pending: Vec<(Vec<T>, F)> = vec![(items, failure)];
    while let Some((set, failure)) = pending.pop() {
        if set.len() <= 1 {
            unstorable.extend(set.into_iter().map(|item| (item, failure.clone())));
            continue;
        }
        let mut left = set.clone();
        let right = left.split_off(set.len() / 2);
        let left_result = probe(left.clone()).await?;
        let right_result = probe(right.clone()).await?;
        match (left_result, right_result) {
            (Probe::Stored, Probe::Stored) => {
                unstorable.extend(set.into_iter().map(|item| (item, failure.clone())));
            }
            (left_result, right_result) => {
                // Pushed right first so the left half is split first.
                if let Probe::Unstorable(failure) = right_result {
                    pending.push((right, failure));
                }
                if let Probe::Unstorable(failure) = left_result {
                    pending.push((left, failure));
                }
            }
        }
    }
    Ok(unstorable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeSet;

    #[test]
    fn sqlstates_are_classified_by_class() {
        for transient in [
            "08006", // connection failure
            "08003", // connection does not exist
            "40001", // serialization failure
            "40P01", // deadlock detected
            "53300", // too many connections
            "53100", // disk full
            "57P01", // admin shutdown
            "57014", // query canceled (statement timeout)
            "XX000", // internal error: unknown, retried as before
        ] {
            assert_eq!(
                classify_sqlstate(transient),
                ErrorClass::Transient,
                "{transient}"
            );
        }
        for permanent in [
            "22003", // numeric value out of range
            "22001", // string data right truncation
            "22P02", // invalid text representation
            "22021", // character not in repertoire
            "23505", // unique violation (not the handled conflict)
            "23514", // check violation
            "23503", // foreign key violation
            "54000", // program limit exceeded (row too big)
        ] {
            assert_eq!(
                classify_sqlstate(permanent),
                ErrorClass::Permanent,
                "{permanent}"
            );
        }
        for fatal in ["42P01", "42703", "42501"] {
            assert_eq!(classify_sqlstate(fatal), ErrorClass::Fatal, "{fatal}");
        }
    }

    /// A fake writer: a set of records is stored unless it holds a bad one
    /// (or, for `together`, all of a group that fails only together).
    struct Fake {
        bad: BTreeSet<u32>,
        together: BTreeSet<u32>,
        probes: RefCell<Vec<Vec<u32>>>,
        transient_after: Option<usize>,
    }

    impl Fake {
        fn new(bad: &[u32]) -> Self {
            Self {
                bad: bad.iter().copied().collect(),
                together: BTreeSet::new(),
                probes: RefCell::new(Vec::new()),
                transient_after: None,
            }
        }

        fn probe(&self, set: Vec<u32>) -> Result<Probe<String>, &'static str> {
            let mut probes = self.probes.borrow_mut();
            if self
                .transient_after
                .is_some_and(|after| probes.len() >= after)
            {
                return Err("connection lost");
            }
            probes.push(set.clone());
            if let Some(bad) = set.iter().find(|item| self.bad.contains(item)) {
                return Ok(Probe::Unstorable(format!("22003 at {bad}")));
            }
            if !self.together.is_empty() && self.together.iter().all(|item| set.contains(item)) {
                return Ok(Probe::Unstorable("only together".into()));
            }
            Ok(Probe::Stored)
        }
    }

    fn run(fake: &Fake, items: Vec<u32>) -> Result<Vec<(u32, String)>, &'static str> {
        let future = bisect(items, |set| {
            let result = fake.probe(set);
            async move { result }
        });
        futures::executor::block_on(future)
    }

    #[test]
    fn a_clean_batch_needs_one_probe() {
        let fake = Fake::new(&[]);
        assert_eq!(run(&fake, (0..100).collect()), Ok(vec![]));
        assert_eq!(fake.probes.borrow().len(), 1);
    }

    #[test]
    fn bisection_finds_exactly_the_bad_records() {
        let fake = Fake::new(&[3, 64, 65, 999]);
        let found = run(&fake, (0..1000).collect()).expect("no transient error");
        let items: Vec<u32> = found.iter().map(|(item, _)| *item).collect();
        assert_eq!(items, [3, 64, 65, 999], "in batch order");
        for (item, failure) in &found {
            assert_eq!(failure, &format!("22003 at {item}"), "its own failure");
        }
        // Logarithmic, not one probe per record.
        let probes = fake.probes.borrow().len();
        assert!(probes <= 1 + 4 * 2 * 10, "{probes} probes");
    }

    #[test]
    fn a_single_bad_record_is_found_alone() {
        let fake = Fake::new(&[0]);
        assert_eq!(run(&fake, vec![0]), Ok(vec![(0, "22003 at 0".into())]));
        let fake = Fake::new(&[7]);
        let found = run(&fake, (0..8).collect()).expect("found");
        assert_eq!(found, vec![(7, "22003 at 7".into())]);
    }

    #[test]
    fn records_failing_only_together_are_set_aside_as_their_smallest_failing_set() {
        let mut fake = Fake::new(&[]);
        fake.together = [2, 5].into_iter().collect();
        let found = run(&fake, (0..8).collect()).expect("found");
        let items: Vec<u32> = found.iter().map(|(item, _)| *item).collect();
        // {0..3} and {4..7} are each stored; the whole fails: all of it is
        // the smallest set known to fail.
        assert_eq!(items, (0..8).collect::<Vec<_>>());
        let mut fake = Fake::new(&[]);
        fake.together = [4, 5].into_iter().collect();
        let found = run(&fake, (0..8).collect()).expect("found");
        let items: Vec<u32> = found.iter().map(|(item, _)| *item).collect();
        assert_eq!(items, [4, 5], "the rest is stored");
    }

    #[test]
    fn a_transient_error_during_the_search_ends_it() {
        let mut fake = Fake::new(&[5]);
        fake.transient_after = Some(3);
        assert_eq!(run(&fake, (0..16).collect()), Err("connection lost"));
    }
}
