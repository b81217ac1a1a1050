//! The database backends a test runs on, and `backend_test!`, which turns one async (or
//! blocking) test function taking a [`Backend`] into a test per backend. The PostgreSQL test
//! passes, saying so on stderr, when `ZULIP_LISTENERS_TEST_PG_URL` is not set (and
//! `tests/skipped.rs` reports it skipped at the end of `cargo test`).

pub use super::requirements::PG_ENV;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Whether PostgreSQL tests run; if not, the running test says on stderr that it is skipped.
pub fn postgres_enabled() -> bool {
    if super::requirements::postgres_url().is_some() {
        true
    } else {
        let test = std::thread::current()
            .name()
            .unwrap_or("a test")
            .to_string();
        eprintln!("note: {PG_ENV} is not set; {test} is skipped");
        false
    }
}

/// `backend_test!(async fn name)` after `async fn name(backend: Backend)` adds the tests
/// `name::sqlite` and `name::postgres` (actix-web's runtime); `backend_test!(fn name)` does
/// the same for a blocking `fn name(backend: Backend)`.
macro_rules! backend_test {
    (async fn $name:ident) => {
        mod $name {
            use $crate::support::{Backend, postgres_enabled};

            #[actix_web::test]
            async fn sqlite() {
                super::$name(Backend::Sqlite).await;
            }

            #[actix_web::test]
            async fn postgres() {
                if postgres_enabled() {
                    super::$name(Backend::Postgres).await;
                }
            }
        }
    };
    (fn $name:ident) => {
        mod $name {
            use $crate::support::{Backend, postgres_enabled};

            #[test]
            fn sqlite() {
                super::$name(Backend::Sqlite);
            }

            #[test]
            fn postgres() {
                if postgres_enabled() {
                    super::$name(Backend::Postgres);
                }
            }
        }
    };
}

pub(crate) use backend_test;
