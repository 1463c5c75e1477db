"""A local web page for deblurring: drop a photo, compare before/after, see the depth.

    pip install -e '.[demo]'
    python -m radblur_jax.demo --checkpoint TRAIN_WORKDIR [--port 7860]
    python -m radblur_jax.demo --random-init tiny        # smoke test: random weights

The page shows the blurry input and the restored image under a before/after slider, the
predicted depth as a colour map (near = bright), how many sub-decoders the exit head chose (per
tile for photos restored in windows: `--tile auto` chooses as the deblur CLI does), the time
taken, and a download of the restored image at the input's size, bit depth and mode (the
deblur CLI's output for the same photo and options, bit for bit).
A file that is not an image, too large, or of an unsupported kind gets a message on the page;
the server keeps serving. The page is served on 127.0.0.1 only unless --host says otherwise.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from radblur_jax.cli_args import OneLineParser
from radblur_jax.demo_page import DEFAULT_MAX_MEGAPIXELS, DemoSession, PageResult

API_NAME = "restore"  # the page's one endpoint: gradio_client's `api_name="/restore"`


def build_parser() -> argparse.ArgumentParser:
    from radblur_jax.deblur import tile_arg
    from radblur_jax.eval.loading import add_model_arguments

    p = OneLineParser(prog="python -m radblur_jax.demo",
                      description="A local web page that deblurs dropped photos.")
    add_model_arguments(p)
    p.add_argument("--port", type=int, default=7860, help="port to serve on")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--tile", type=tile_arg, default="auto", help="sliding windows of "
                   "this many px for photos larger than that on a side (0 = whole image; auto, "
                   "the default: as the deblur CLI's --tile auto)")
    p.add_argument("--overlap", type=int, default=32, help="px shared by neighbouring windows")
    p.add_argument("--no-adaptive", action="store_true", help="run every sub-decoder instead "
                   "of the number the exit head asks for")
    p.add_argument("--max-megapixels", type=float, default=DEFAULT_MAX_MEGAPIXELS,
                   help="larger photos are refused with a message")
    return p


def build_page(session: DemoSession) -> Any:
    """The Gradio Blocks of the page around `session` (not launched)."""
    import gradio as gr

    def restore(upload: str | None):
        result: PageResult = session.restore_upload(upload)
        pair = (result.blurry, result.restored) if result.ok else None
        return pair, result.depth, result.download, result.message

    # Gradio keeps the files it served (previews, downloads) in its cache: cleared hourly.
    with gr.Blocks(title="RADBlur deblurring", delete_cache=(3600, 3600)) as page:
        gr.Markdown("# RADBlur: deblurring with depth\n"
                    f"Model: {session.description}. Drop a photo; the slider compares the "
                    "blurry input (left) with the restored image (right).")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Photo", type="filepath", elem_id="upload")
                status = gr.Markdown(session.restore_upload(None).message, elem_id="status")
                download = gr.File(label="Restored image (full resolution and bit depth)",
                                   interactive=False, elem_id="download")
            with gr.Column(scale=2):
                slider = gr.ImageSlider(label="Blurry | restored", type="numpy", format="png",
                                        interactive=False, elem_id="compare")
                depth = gr.Image(label="Predicted depth (near = bright)", type="numpy",
                                 format="png", interactive=False, elem_id="depth")
        upload.upload(restore, inputs=upload, outputs=[slider, depth, download, status],
                      api_name=API_NAME)
    return page


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    auto = args.tile == "auto"
    tile = 0 if auto else args.tile
    if tile < 0 or args.overlap < 0 or (tile and args.overlap >= tile):
        parser.error("--tile and --overlap must be >= 0, with --overlap < --tile")
    if args.max_megapixels <= 0:
        parser.error("--max-megapixels must be > 0")
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("error: the demo needs Gradio: pip install -e '.[demo]'", file=sys.stderr)
        return 2
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from radblur_jax.deblur import auto_tiling
    from radblur_jax.eval.inference import InferenceOptions
    from radblur_jax.eval.loading import CheckpointLoadError, load_from_args

    try:
        loaded = load_from_args(args)
    except CheckpointLoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    options = InferenceOptions(tile=tile, overlap=args.overlap, adaptive=not args.no_adaptive)
    session = DemoSession(loaded.model, loaded.params, description=loaded.description,
                          options=options, max_megapixels=args.max_megapixels,
                          tiling=auto_tiling() if auto else None)
    page = build_page(session)
    page.queue(default_concurrency_limit=1)  # one model: photos are restored one at a time
    page.launch(server_name=args.host, server_port=args.port, show_error=False,
                footer_links=["api"], max_file_size="500mb")
    return 0


if __name__ == "__main__":
    from radblur_jax.host_memory import reexec_with_huge_pages
    reexec_with_huge_pages(forward_only=True)
    sys.exit(main())
