"""`gpq serve`: search a saved index over HTTP, a JSON API and one web page (Starlette on uvicorn,
the `[serve]` extra). It wires a loaded model and index together and holds no algorithm.

```python
live = LiveIndex("photos.npz", model)  # reloaded when the file changes
app = create_app(model, live, k=10)  # an ASGI app: POST /search, GET /items/ID/similar, ...
```

Modules: `uploads` (request bodies bounded in bytes, images decoded as `gpq search` decodes files),
`live_index` (the served index and its reload), `batching` (concurrent requests encoded and
searched together), `page` (the HTML page), `app` (the routes) and `run` (uvicorn on a bound
socket). The routes and JSON are in docs/serving.md.
"""

from gpq_keras.server.app import create_app
from gpq_keras.server.live_index import LiveIndex

__all__ = ["LiveIndex", "create_app"]
