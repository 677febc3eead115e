//! `xcord-loadtest chaos`: placeholder.
mod client;
mod procs;
use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct ChaosArgs {}

pub fn main(_a: ChaosArgs, _command: String) -> Result<bool> {
    anyhow::bail!("not yet")
}
