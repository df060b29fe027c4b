//! Group commit of step outcomes: commits that arrive together go to the
//! server as one transaction, their statements pipelined on one
//! connection, so concurrent runs share a round trip and a WAL flush. A
//! commit that arrives alone is sent alone (no waiting).

use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};

use super::super::*;
use super::sql;

type Reply = oneshot::Sender<StoreResult<()>>;

pub(super) struct Batcher {
    tx: mpsc::UnboundedSender<(Lease, StepCommit, Reply)>,
    task: tokio::task::JoinHandle<()>,
}

impl Batcher {
    pub fn start(pool: Pool) -> Batcher {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(Arc::new(pool), rx));
        Batcher { tx, task }
    }

    pub async fn commit(&self, lease: Lease, commit: StepCommit) -> StoreResult<()> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((lease, commit, reply))
            .map_err(|_| StoreError::backend("the postgres commit task stopped"))?;
        answer
            .await
            .map_err(|_| StoreError::backend("the postgres commit task stopped"))?
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const MAX_BATCH: usize = 256;

async fn run(pool: Arc<Pool>, mut rx: mpsc::UnboundedReceiver<(Lease, StepCommit, Reply)>) {
    // Several batches may be in flight, one per pooled connection.
    let slots = Arc::new(tokio::sync::Semaphore::new(4));
    while let Some(first) = rx.recv().await {
        let permit = slots.clone().acquire_owned().await.expect("never closed");
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            commit_batch(&pool, batch).await;
            drop(permit);
        });
    }
}

async fn commit_batch(pool: &Pool, batch: Vec<(Lease, StepCommit, Reply)>) {
    let mut client = match pool.get().await {
        Ok(c) => c,
        Err(e) => {
            let e = StoreError::from(e);
            for (_, _, reply) in batch {
                let _ = reply.send(Err(e.clone()));
            }
            return;
        }
    };
    if batch.len() == 1 {
        let (lease, commit, reply) = batch.into_iter().next().expect("one");
        let _ = reply.send(sql::commit_step(&client, &lease, &commit).await);
        return;
    }
    // One transaction, the statements pipelined.
    let together = async {
        let tx = client.transaction().await?;
        let results = {
            let tx = &tx;
            let writes = batch
                .iter()
                .map(|(lease, commit, _)| async move { sql::commit_step(tx, lease, commit).await });
            join_all(writes).await
        };
        // Only a lost lease may fail a write without failing the
        // transaction (it writes nothing).
        if results.iter().any(|r| {
            r.as_ref()
                .is_err_and(|e| !matches!(e, StoreError::LeaseLost { .. }))
        }) {
            return Err(StoreError::backend("a write of the batch failed"));
        }
        tx.commit().await?;
        Ok::<_, StoreError>(results)
    };
    match together.await {
        Ok(results) => {
            for ((_, _, reply), r) in batch.into_iter().zip(results) {
                let _ = reply.send(r);
            }
        }
        Err(_) => {
            // Each alone, so that one failure does not fail the others.
            for (lease, commit, reply) in batch {
                let _ = reply.send(sql::commit_step(&client, &lease, &commit).await);
            }
        }
    }
}

/// Poll every future until all are done; outputs in order.
async fn join_all<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut futs: Vec<std::pin::Pin<Box<F>>> = futs.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in futs.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.expect("finished")).collect()
}
