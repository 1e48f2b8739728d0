//! A tokio service that takes jobs from worker processes over `shm:` and stops on a
//! shutdown signal (Ctrl-C), both in one `tokio::select!`; no thread waits on the channel.
//!
//! Run with `cargo run --example async_service --features tokio`. The example starts three
//! workers (itself, run again with `worker`), each sending a few jobs; the service ends when
//! every worker has finished, or at Ctrl-C.

use std::process::Command;
use std::time::Duration;

use conduit::{Receiver, RecvError, Sender};

#[derive(serde::Serialize, serde::Deserialize, Debug)]
struct Job {
    worker: u32,
    seq: u32,
    payload: String,
}

fn worker(addr: &str, id: u32) -> Result<(), Box<dyn std::error::Error>> {
    let tx = Sender::<Job>::connect(addr)?;
    for seq in 0..5 {
        let payload = format!("result {seq} from worker {id}");
        tx.send(Job {
            worker: id,
            seq,
            payload,
        })?;
        std::thread::sleep(Duration::from_millis(5 * u64::from(id + 1)));
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, role, addr, id] = &args[..] {
        if role == "worker" {
            return worker(addr, id.parse()?);
        }
    }

    let dir = std::env::temp_dir().join(format!("conduit-async-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let addr = format!("shm:{}", dir.join("jobs.sock").display());
    let jobs = Receiver::<Job>::bind(&addr)?;

    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for id in 0..3 {
        let args = ["worker".to_string(), addr.clone(), id.to_string()];
        children.push(Command::new(&exe).args(args).spawn()?);
    }

    let mut done = 0;
    loop {
        tokio::select! {
            job = jobs.recv_async() => match job {
                Ok(job) => {
                    done += 1;
                    println!("job {}/{} from worker {}: {}", job.seq, 5, job.worker, job.payload);
                }
                // No worker is connected any more and every job was taken. (A worker that
                // has not connected yet would be served by the next receive: we stop once
                // all fifteen jobs are in.)
                Err(RecvError::Disconnected) if done == 15 => break,
                Err(RecvError::Disconnected) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(e) => return Err(e.into()),
            },
            _ = tokio::signal::ctrl_c() => {
                println!("shutdown signal");
                break;
            }
        }
    }
    for mut child in children {
        child.wait()?;
    }
    println!("{done} jobs done");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
