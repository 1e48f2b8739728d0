//! Waiting on several receivers at once with `conduit::Select`: jobs arrive over shared
//! memory and over a Unix socket, a stop signal over a thread channel, all of different
//! message types, and one thread serves them all without blocking on any single one.
//!
//! Run with `cargo run --example select`.

use std::time::Duration;

use conduit::{channel, Backend, Receiver, Select, Sender, TryRecvError};

#[derive(serde::Serialize, serde::Deserialize, Debug)]
struct Job {
    id: u32,
    what: String,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("conduit-select-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let shm_addr = format!("shm:{}", dir.join("jobs.sock").display());
    let unix_addr = format!("unix:{}", dir.join("logs.sock").display());

    // Jobs over shared memory, log lines over a Unix socket, a stop signal between threads.
    let jobs = Receiver::<Job>::bind(&shm_addr)?;
    let logs = Receiver::<String>::bind(&unix_addr)?;
    let (stop_tx, stop) = channel::<()>(Backend::Thread)?;

    let job_tx = Sender::<Job>::connect(&shm_addr)?;
    let log_tx = Sender::<String>::connect(&unix_addr)?;
    std::thread::spawn(move || {
        for id in 0..5 {
            let what = format!("job number {id}");
            job_tx.send(Job { id, what }).unwrap();
            log_tx.send(format!("queued job {id}")).unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(20));
        stop_tx.send(()).unwrap();
    });

    let mut sel = Select::new();
    let job_i = sel.recv(&jobs);
    let log_i = sel.recv(&logs);
    let stop_i = sel.recv(&stop);
    loop {
        // An index that is ready, or was spuriously reported so: `try_recv` tells, and on
        // `Empty` we simply wait again.
        let i = sel.ready();
        if i == job_i {
            match jobs.try_recv() {
                Ok(job) => println!("job {}: {}", job.id, job.what),
                Err(TryRecvError::Empty) => {}
                Err(_) => {
                    // Every job sender is gone (a bound receiver would serve a new one).
                    sel.remove(job_i);
                }
            }
        } else if i == log_i {
            match logs.try_recv() {
                Ok(line) => println!("log: {line}"),
                Err(TryRecvError::Empty) => {}
                Err(_) => sel.remove(log_i),
            }
        } else if i == stop_i && stop.try_recv().is_ok() {
            println!("stop");
            break;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
