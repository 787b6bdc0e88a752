//! `sqlx::migrate!` embeds the migration files at compile time, but cargo does not know they are
//! inputs: without this a new migration file would not reach a binary built before it appeared.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
