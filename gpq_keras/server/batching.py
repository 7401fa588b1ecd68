"""Concurrent searches answered together: one `model.encode` and one `index.search` per batch."""

import asyncio

import numpy as np


class EmptyIndex(Exception):
    """The served index holds no items."""


class SearchBatcher:
    """Queries of concurrent requests encoded and searched as one batch, in a worker thread.

    ```python
    batcher = SearchBatcher(model, live_index, max_batch=32, wait=0.005)
    task = asyncio.create_task(batcher.run())  # in the server's event loop
    record, size = await batcher.search(image, k=10, name="query.jpg")  # `gpq search --json`'s
    ```

    The first query of a batch waits up to `wait` seconds for others (at most `max_batch`); while
    the worker runs, new ones queue up for the next batch. Every query of a batch is searched in
    the index that was current when the batch started, with the batch's largest k, and keeps its
    own top k (ranking is by distance, then position: a prefix of a longer top-k). One thread at a
    time uses the model and the index.

    A lone query gives exactly `gpq search`'s features and results. In a batch of several, the
    features and distances can differ from them in the last float32 bits (the kernels' summation
    order depends on the batch's shape).

    Args:
        model: the GPQ model.
        live: a `LiveIndex`.
        max_batch: int, queries per batch at most.
        wait: float, seconds the first query of a batch waits for more.
    """

    def __init__(self, model, live, max_batch=32, wait=0.005):
        self.model, self.live = model, live
        self.max_batch, self.wait = int(max_batch), float(wait)
        self._queue = asyncio.Queue()  # bound to the event loop that first uses it

    async def search(self, image, k, name):
        """(record, batch size): the record {"query": name, "results": [...]} of one uint8 image
        (1, H, W, 3), its top k (capped at the index size), and how many queries its batch held;
        EmptyIndex when the index holds no items."""
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((image, int(k), name, future))
        return await future

    async def run(self):
        """Take batches off the queue until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.wait
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except asyncio.TimeoutError:
                    break
            batch = [item for item in batch if not item[3].done()]  # cancelled: client gone
            if not batch:
                continue
            try:
                records = await asyncio.to_thread(self._answer, batch)
            except Exception as exc:  # each waiting request answers with it
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (*_, future), record in zip(batch, records):
                if not future.done():
                    future.set_result((record, len(batch)))

    def _answer(self, batch):
        """The records of a batch [(image, k, name, future)] (in the worker thread)."""
        from gpq_keras.retrieval.lookup import lookups

        index = self.live.current  # this batch's index, whatever a reload does meanwhile
        if not index.ntotal:
            raise EmptyIndex("the index holds no items")
        images = np.concatenate([image for image, *_ in batch])
        ks = [min(k, index.ntotal) for _, k, _, _ in batch]
        distances, ids = index.search(self.model.encode(images), max(ks))
        return [
            lookups(index, [name], distances[i : i + 1, :k], ids[i : i + 1, :k])[0]
            for i, (k, (_, _, name, _)) in enumerate(zip(ks, batch))
        ]
