"""The draw-a-digit web page and its JSON API (FastAPI); run it with `digitlab serve`.

    from digitlab.web import create_app
    app = create_app(digitlab.load("runs/mlp/model.safetensors"))
"""

from digitlab.web.app import MAX_UPLOAD_BYTES, create_app

__all__ = ["MAX_UPLOAD_BYTES", "create_app"]
