"""Client verbs of the ``attnserve`` console script, built on :class:`service.client.Client`.

    attnserve classify FILE...                      top-k labels per image
    attnserve generate --class N --count K --seed S -o grid.png
    attnserve encode "text" | --ids 1,2,3           labels, tokens and embedding
    attnserve attention generate --pixel Y,X -o overlay.png     where a pixel looks
    attnserve attention encode "text" -o heads.png               heads x tokens heatmap
    attnserve attention classify digit.png --model M -o maps.png  what a vision model attends to

Human-readable output by default, ``--json`` for scripts. Exit status: 0 when everything
succeeded, 1 when a call (or one of the files) failed, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from service.client.connection import DEFAULT_URL, TLS, ClientError
from service.client.sync import Client

VERBS = ("classify", "generate", "encode", "attention")
TOKEN_ENV = "ATTNSERVE_AUTH_TOKEN"


def main(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv))
    try:
        with Client(args.url, tls=_tls(args), timeout=args.timeout, token=_token(args)) as client:
            return args.run(client, args)
    except ClientError as error:
        print(f"attnserve {args.verb}: {error}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as error:  # unreadable input, unwritable output, bad TLS files
        print(f"attnserve {args.verb}: {error}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=DEFAULT_URL, help=f"server HOST:PORT (default {DEFAULT_URL}); grpcs://... for TLS")
    common.add_argument("--timeout", type=float, default=30.0, help="seconds per call, retries included (default 30)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument("--model", default="", help="model name (default: the verb's default model)")
    common.add_argument("--model-version", dest="version", default="", help="model version (default: newest)")
    tls = common.add_argument_group("TLS")
    tls.add_argument("--tls", action="store_true", help="use TLS (system roots unless --tls-ca)")
    tls.add_argument("--tls-ca", type=Path, help="root certificate(s) to verify the server (PEM)")
    tls.add_argument("--tls-cert", type=Path, help="client certificate chain, for mutual TLS (PEM)")
    tls.add_argument("--tls-key", type=Path, help="client private key (PEM)")
    tls.add_argument("--tls-server-name", help="name the server certificate must carry")
    common.add_argument("--auth-token-file", type=Path, metavar="PATH",
                        help=f"send 'authorization: Bearer <token>' (or set {TOKEN_ENV})")

    parser = argparse.ArgumentParser(prog="attnserve")
    verbs = parser.add_subparsers(dest="verb", required=True)

    p = verbs.add_parser("classify", parents=[common], help="classify images (PNG or JPEG)")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--channel-weights", action="store_true", help="also print the SE channel weights")
    p.set_defaults(run=classify)

    p = verbs.add_parser("generate", parents=[common], help="generate images from a seed and class")
    _generate_args(p)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("-o", "--output", type=Path, default=Path("generate.png"), help="grid PNG (default generate.png)")
    p.add_argument("--out-dir", type=Path, help="also write each image as OUT_DIR/seed_<seed>.png")
    p.add_argument("--columns", type=int, help="grid columns (default: a square grid)")
    p.set_defaults(run=generate)

    p = verbs.add_parser("encode", parents=[common], help="encode text or token ids")
    _sequence_args(p)
    p.add_argument("--top-k", type=int, default=3)
    p.set_defaults(run=encode)

    p = verbs.add_parser("attention", help="render attention maps as PNG")
    kinds = p.add_subparsers(dest="kind", required=True)
    g = kinds.add_parser("generate", parents=[common], help="where chosen pixels of a generated image look")
    _generate_args(g)
    g.add_argument("--pixel", action="append", type=_pair, metavar="Y,X",
                   help="query pixel (repeatable; default: four pixels at the quarter points)")
    g.add_argument("-o", "--output", type=Path, default=Path("attention.png"))
    g.set_defaults(run=attention_generate)
    e = kinds.add_parser("encode", parents=[common], help="heads x tokens attention of one sequence")
    _sequence_args(e)
    e.add_argument("--query", type=int, help="query token index (default: mean over all queries)")
    e.add_argument("-o", "--output", type=Path, default=Path("attention.png"))
    e.set_defaults(run=attention_encode)
    c = kinds.add_parser("classify", parents=[common],
                         help="what an image classifier attends to: CBAM spatial maps, the STN's crop, "
                              "or SASA windows (by the model's outputs)")
    c.add_argument("file", type=Path, metavar="FILE")
    c.add_argument("--pixel", action="append", type=_pair, metavar="Y,X",
                   help="local-attention query pixel of the model input (repeatable; default: four "
                        "pixels at the quarter points)")
    c.add_argument("--scale", type=int, default=8, help="upscale factor of the PNG (default 8)")
    c.add_argument("-o", "--output", type=Path, default=Path("attention.png"))
    c.set_defaults(run=attention_classify, model_default="cbam_classifier")
    return parser


def _generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--class", dest="classes", action="append", metavar="N",
                   help="class index or label (repeatable: one per image; default class 0)")
    p.add_argument("--seed", type=int, help="latent seed (default: the server draws one and prints it)")
    p.add_argument("--truncation", type=float, default=0.0, help="truncation threshold (0: off)")
    p.add_argument("--scale", type=int, default=4, help="upscale factor of the PNG (default 4)")


def _sequence_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("texts", nargs="*", metavar="TEXT", help="UTF-8 text (tokenised by the server)")
    p.add_argument("--ids", action="append", default=[], type=_ids, metavar="1,2,3", help="token ids (repeatable)")
    p.add_argument("--source", action="append", default=[], metavar="TEXT",
                   help="pair models (langid_pair): the source text each sequence reads, one per sequence")


def _pair(text: str) -> tuple[int, int]:
    y, _, x = text.partition(",")
    return int(y), int(x)


def _ids(text: str) -> list[int]:
    return [int(t) for t in text.replace(" ", "").split(",") if t]


def _tls(args: argparse.Namespace) -> TLS | None:
    if not (args.tls or args.tls_ca or args.tls_cert or args.tls_key or args.tls_server_name):
        return None
    return TLS(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)


def _token(args: argparse.Namespace) -> str | None:
    if args.auth_token_file is not None:
        return args.auth_token_file.read_text(encoding="utf-8").strip()
    return os.environ.get(TOKEN_ENV) or None


def _classes(values: list[str] | None) -> list[int] | list[str] | None:
    if not values:
        return None
    return [int(v) for v in values] if all(v.lstrip("-").isdigit() for v in values) else values


def _labels(labels: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"index": x.index, "label": x.label, "probability": round(x.probability, 6)} for x in labels]


def _show(labels: Sequence[Any]) -> str:
    return "  ".join(f"{x.label} ({x.probability:.3f})" for x in labels)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


# -- verbs --------------------------------------------------------------------------------------
def classify(client: Client, args: argparse.Namespace) -> int:
    """One stream message per file: the server batches them, and one bad file fails alone."""
    files: list[Path] = args.files
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise OSError(f"no such file: {', '.join(missing)}")
    rows: list[dict[str, Any]] = [{} for _ in files]
    replies = client.classify_stream(([f] for f in files), top_k=args.top_k, channel_weights=args.channel_weights,
                                     model=args.model, version=args.version)
    for reply in replies:
        row = rows[reply.index] = {"file": str(files[reply.index])}
        if reply.error is not None:
            row["error"] = f"{reply.error.code}: {reply.error.details.replace('images[0]', 'image')}"
            continue
        item = reply.result.items[0]  # type: ignore[union-attr]
        row["labels"] = _labels(item.labels)
        if item.channel_weights is not None:
            row["channel_weights"] = [round(float(w), 6) for w in item.channel_weights]
    if args.json:
        _print_json(rows)
    else:
        width = max(len(r["file"]) for r in rows)
        for row in rows:
            text = row.get("error") or "  ".join(f"{x['label']} ({x['probability']:.3f})" for x in row["labels"])
            print(f"{row['file']:<{width}}  {text}")
            if "channel_weights" in row:
                w = np.asarray(row["channel_weights"])
                stats = f"mean {w.mean():.3f}, min {w.min():.3f}, max {w.max():.3f}"
                print(f"{'':<{width}}  channel weights: {w.size} values, {stats}")
    return 1 if any("error" in r for r in rows) else 0


def generate(client: Client, args: argparse.Namespace) -> int:
    from PIL import Image

    from service.client.render import image_grid

    result = client.generate(args.count, classes=_classes(args.classes), seed=args.seed, truncation=args.truncation,
                             model=args.model, version=args.version)
    images = [Image.open(io.BytesIO(i.png)) for i in result.images]
    image_grid(images, args.columns, scale=args.scale).save(args.output)
    files = []
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        for item in result.images:
            path = args.out_dir / f"seed_{item.seed}.png"
            path.write_bytes(item.png)
            files.append(str(path))
    if args.json:
        _print_json({
            "model": result.model, "version": result.version, "seed": result.seed, "output": str(args.output),
            "images": [{"seed": i.seed, "class_id": i.class_id, "class_label": i.class_label,
                        **({"file": files[n]} if files else {})} for n, i in enumerate(result.images)],
        })
    else:
        classes = sorted({i.class_label for i in result.images})
        print(f"wrote {args.output}: {len(images)} image(s) of class {', '.join(classes)} from {result.model} "
              f"v{result.version}, seed {result.seed} (image i uses seed {result.seed} + i)")
        for path in files:
            print(f"wrote {path}")
    return 0


def _sequences(args: argparse.Namespace) -> list[Any]:
    sequences = [*args.texts, *args.ids]
    if not sequences:
        raise ValueError("give TEXT or --ids")
    return sequences


def encode(client: Client, args: argparse.Namespace) -> int:
    sequences = _sequences(args)
    result = client.encode(sequences, top_k=args.top_k, model=args.model, version=args.version, sources=args.source)
    rows = [
        {"input": s if isinstance(s, str) else list(s), "ids": e.ids.tolist(), "tokens": e.tokens,
         "truncated": e.truncated, "labels": _labels(e.labels), "embedding": [round(float(v), 6) for v in e.embedding]}
        for s, e in zip(sequences, result.items, strict=True)
    ]
    for row, source in zip(rows, args.source):
        row["source"] = source
    if args.json:
        _print_json(rows)
        return 0
    for row, item in zip(rows, result.items, strict=True):
        shown = json.dumps(row["input"]) if isinstance(row["input"], str) else f"ids {row['input']}"
        if "source" in row:
            shown += f" reading {json.dumps(row['source'])}"
        print(f"{shown}: {_show(item.labels)}")
        cut = " (truncated)" if item.truncated else ""
        if item.embedding.size:
            print(f"  {len(item.ids)} tokens{cut}; embedding [{item.embedding.size}] norm "
                  f"{np.linalg.norm(item.embedding):.3f}: {np.array2string(item.embedding[:4], precision=3)} ...")
        else:
            print(f"  {len(item.ids)} tokens{cut}")
    return 0


def attention_generate(client: Client, args: argparse.Namespace) -> int:
    from PIL import Image

    from service.client.render import attention_overlay, image_grid

    asked: Any = args.pixel or "all"
    result = client.generate(1, classes=_classes(args.classes), seed=args.seed, truncation=args.truncation,
                             attention=asked, model=args.model, version=args.version)
    item, grid = result.images[0], result.grid
    assert grid is not None
    maps = item.attention
    if not args.pixel:  # four pixels at the quarter points, as in the SAGAN paper's figure
        wanted = {(y * grid.image_height // 4, x * grid.image_width // 4) for y in (1, 3) for x in (1, 3)}
        cells = {grid.cell(y, x): (y, x) for y, x in sorted(wanted)}
        maps = [type(m)(cells[m.query_index], m.query_index, m.weights) for m in maps if m.query_index in cells]
    image = Image.open(io.BytesIO(item.png))
    panels = [image.convert("RGB").resize((image.width * args.scale, image.height * args.scale), Image.Resampling.NEAREST)]
    panels += [attention_overlay(image, m.weights, m.pixel, scale=args.scale) for m in maps]
    image_grid(panels, columns=len(panels)).save(args.output)
    if args.json:
        _print_json({
            "model": result.model, "version": result.version, "seed": item.seed, "class_label": item.class_label,
            "output": str(args.output), "grid": grid.__dict__,
            "queries": [{"pixel": list(m.pixel), "query_index": m.query_index,
                         "weights": np.round(m.weights, 6).tolist()} for m in maps],
        })
    else:
        print(f"wrote {args.output}: class {item.class_label}, seed {item.seed}; queries on a "
              f"{grid.query_height}x{grid.query_width} grid, keys on {grid.key_height}x{grid.key_width}")
        for m in maps:
            ky, kx = np.unravel_index(int(np.argmax(m.weights)), m.weights.shape)
            print(f"  pixel {m.pixel}: looks most at key cell ({ky}, {kx}) with weight {m.weights.max():.3f}")
    return 0


def attention_encode(client: Client, args: argparse.Namespace) -> int:
    from service.client.render import head_token_heatmap

    sequences = _sequences(args)
    if len(sequences) != 1:
        raise ValueError("attention encode takes one sequence: one TEXT or one --ids")
    result = client.encode(sequences, attention=True, model=args.model, version=args.version, sources=args.source)
    item = result.items[0]
    assert item.attention is not None
    heads, queries, length = item.attention.shape  # queries 1: a pooling model's learned query
    if args.query is not None and not 0 <= args.query < queries:
        raise ValueError(f"--query {args.query}: the model has {queries} query rows per head")
    tokens = item.tokens or [str(i) for i in item.ids]
    if item.source_ids is not None:  # cross-attention: query tokens (rows) x source tokens
        return _cross_picture(result, item, tokens, args)
    weights = item.attention[:, args.query, :] if args.query is not None else item.attention.mean(axis=1)
    head_token_heatmap(weights, tokens).save(args.output)
    if queries == 1:
        query = "the model's learned pooling query"
    elif args.query is not None:
        query = f"token {args.query} ({tokens[args.query]!r})"
    else:
        query = "mean over all queries"
    if args.json:
        _print_json({"model": result.model, "version": result.version, "output": str(args.output), "tokens": tokens,
                     "heads": heads, "query": args.query, "weights": np.round(weights, 6).tolist()})
    else:
        print(f"wrote {args.output}: {heads} heads x {length} tokens, query: {query}")
        for h in range(heads):
            top = int(np.argmax(weights[h]))
            print(f"  head {h}: most weight on token {top} ({tokens[top]!r}), {weights[h, top]:.3f}")
    return 0


def _cross_picture(result: Any, item: Any, tokens: list[str], args: argparse.Namespace) -> int:
    """A pair model's picture: which source tokens each query token read (mean over heads)."""
    from service.client.render import head_token_heatmap

    weights = item.attention.mean(axis=0)  # [query tokens, source tokens]
    keys = item.source_tokens or [str(i) for i in item.source_ids]
    head_token_heatmap(weights, keys, rows=tokens).save(args.output)
    if args.json:
        _print_json({"model": result.model, "version": result.version, "output": str(args.output),
                     "tokens": tokens, "source_tokens": keys, "heads": int(item.attention.shape[0]),
                     "labels": _labels(item.labels), "weights": np.round(weights, 6).tolist()})
    else:
        print(f"wrote {args.output}: {len(tokens)} query tokens x {len(keys)} source tokens; {_show(item.labels)}")
        for i, token in enumerate(tokens):
            top = int(np.argmax(weights[i]))
            print(f"  {token!r} reads {keys[top]!r} most, {weights[i, top]:.3f}")
    return 0


def attention_classify(client: Client, args: argparse.Namespace) -> int:
    """One image through a vision-attention model; what the picture shows depends on the
    outputs the model has (read from its v2 metadata)."""
    from PIL import Image

    from service.client.render import affine_outline, heat_overlay, image_grid

    model = args.model or args.model_default
    tensors = client.tensors(model, args.version)
    outputs = tensors["outputs"]
    _, channels, height, width = next(iter(tensors["inputs"].values()))
    spatial = any(n.startswith("spatial_attention_") for n in outputs)
    transform = "theta" in outputs and "rectified_image" in outputs
    window = "window_attention" in outputs
    if not (spatial or transform or window):
        raise ValueError(f"model {model!r} has no spatial_attention, theta or window_attention outputs to draw")
    pixels = args.pixel or [(height * fy // 4, width * fx // 4) for fy in (1, 3) for fx in (1, 3)]
    result = client.classify([args.file], top_k=3, model=model, version=args.version, spatial_attention=spatial,
                             transform=transform, attention=pixels if window else None)
    item = result.items[0]
    shown = Image.open(args.file).convert("L" if channels == 1 else "RGB").resize((width, height))
    panels = [shown.convert("RGB").resize((width * args.scale, height * args.scale), Image.Resampling.NEAREST)]
    report: dict[str, Any] = {"model": result.model, "version": result.version, "output": str(args.output),
                              "labels": _labels(item.labels)}
    lines = [f"{args.file}: {_show(item.labels)}"]
    for stage, plane in enumerate(item.spatial_attention):
        panels.append(heat_overlay(shown, plane, args.scale, normalise=False))
        lines.append(f"  stage {stage}: {plane.shape[0]}x{plane.shape[1]} spatial map, mean {plane.mean():.3f}, "
                     f"max {plane.max():.3f} at {tuple(int(v) for v in np.unravel_index(int(plane.argmax()), plane.shape))}")
    report["spatial_attention"] = [np.round(p, 6).tolist() for p in item.spatial_attention]
    if item.theta is not None and item.rectified_png is not None:
        panels[0] = affine_outline(shown, item.theta, args.scale)
        crop = Image.open(io.BytesIO(item.rectified_png))
        panels.append(crop.convert("RGB").resize(panels[0].size, Image.Resampling.NEAREST))
        report["theta"] = np.round(item.theta, 6).tolist()
        lines.append(f"  theta {np.array2string(item.theta, precision=3)}; rectified {crop.width}x{crop.height} "
                     "(the crop is outlined on the input)")
    for query in item.attention:
        panels.append(_window_panel(shown, query, args.scale))
        head_mean = query.weights.mean(axis=0)
        dy, dx = np.unravel_index(int(head_mean.argmax()), head_mean.shape)
        half = head_mean.shape[0] // 2
        lines.append(f"  pixel {query.pixel} (cell {query.cell} of {query.grid[0]}x{query.grid[1]}): "
                     f"{query.weights.shape[0]} heads, mean weight peaks at offset ({dy - half:+d}, {dx - half:+d})")
    report["attention"] = [{"pixel": list(q.pixel), "cell": list(q.cell), "grid": list(q.grid),
                            "weights": np.round(q.weights, 6).tolist()} for q in item.attention]
    image_grid(panels, columns=len(panels)).save(args.output)
    if args.json:
        _print_json(report)
    else:
        print(f"wrote {args.output}: {len(panels)} panels from {result.model} v{result.version}")
        print("\n".join(lines))
    return 0


def _window_panel(shown: Any, query: Any, scale: int) -> Any:
    """A local-attention window (mean over heads) placed on the layer's grid around its query
    cell, blended over the input, with the query pixel marked."""
    from service.client.render import attention_overlay

    rows, cols = query.grid
    window = query.weights.mean(axis=0)
    half = window.shape[0] // 2
    plane = np.zeros((rows, cols), np.float64)
    for dy in range(window.shape[0]):
        for dx in range(window.shape[1]):
            y, x = query.cell[0] + dy - half, query.cell[1] + dx - half
            if 0 <= y < rows and 0 <= x < cols:
                plane[y, x] = window[dy, dx]
    return attention_overlay(shown, plane, query.pixel, scale=scale)
