//! The in-process bus (the embedded default, no `--redis`): publishes from the admin
//! route and from shards (typing, presence) go through one bounded queue into the
//! bus thread, which routes them exactly as events from Redis.

use crossbeam_channel::{Receiver, Sender};

use super::Router;
use crate::limits::MEMORY_BUS_QUEUE;

/// One publish on the in-process bus.
pub struct Published {
    pub channel: String,
    pub body: Vec<u8>,
}

/// Start the bus thread; returns the publish queue.
pub fn start(mut router: Router) -> Result<Sender<Published>, String> {
    let (tx, rx): (Sender<Published>, Receiver<Published>) =
        crossbeam_channel::bounded(MEMORY_BUS_QUEUE);
    let routes = router.routes.clone();
    std::thread::Builder::new()
        .name("xcord-bus".into())
        .spawn(move || loop {
            crossbeam_channel::select! {
                recv(routes) -> op => match op {
                    Ok(op) => router.apply(op),
                    Err(_) => return,
                },
                recv(rx) -> p => match p {
                    // `route` applies every pending route change first.
                    Ok(p) => router.route(p.channel.as_bytes(), &p.body),
                    Err(_) => return,
                },
                // Idle: still end resume windows on time.
                default(std::time::Duration::from_millis(500)) => router.apply_routes(),
            }
        })
        .map_err(|e| format!("cannot start the bus thread: {e}"))?;
    Ok(tx)
}
