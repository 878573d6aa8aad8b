//! `warden db`: the run store's schema, for operators who upgrade deliberately.

use super::DbArg;
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum DbCmd {
    /// Create the run store, or bring its schema up to this warden's.
    Migrate {
        #[command(flatten)]
        db: DbArg,
    },
    /// Say whether the run store's schema is this warden's (exit 1 if not), changing nothing.
    Check {
        #[command(flatten)]
        db: DbArg,
    },
}

pub fn run(cmd: DbCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        DbCmd::Migrate { db } => {
            warden::store::open(&db.db)?;
            let s = warden::store::schema_status(&db.db)?;
            println!("{}: schema {} (this warden's)", warden::store::describe(&db.db), s.found);
            Ok(ExitCode::SUCCESS)
        }
        DbCmd::Check { db } => {
            let s = warden::store::schema_status(&db.db)?;
            let name = warden::store::describe(&db.db);
            match s.found.cmp(&s.known) {
                std::cmp::Ordering::Equal => {
                    println!("{name}: schema {} (this warden's)", s.found);
                    Ok(ExitCode::SUCCESS)
                }
                std::cmp::Ordering::Less => {
                    eprintln!("{name}: schema {}, this warden's is {}; run `warden db migrate --db …` (serve also migrates at start)", s.found, s.known);
                    Ok(ExitCode::from(1))
                }
                std::cmp::Ordering::Greater => {
                    eprintln!("{name}: schema {} was written by a newer warden (this one knows {}); upgrade warden", s.found, s.known);
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}
