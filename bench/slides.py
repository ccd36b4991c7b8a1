"""Slide benchmark: memory and speed of slide → answer, on a generated giant slide and on
real files.

    python -m bench.slides [--model DIR] [--width 100000 --height 80000] [--slide PATH]

1. Generates a mostly-glass pyramidal TIFF (default 100,000 × 80,000 px at 0.25 µm/px,
   tiled JPEG, a few textured tissue islands), tile by tile (`histopath.slide_writer`), so
   writing it needs no more memory than a tile.
2. Calls it with `evaluation.slide_predict.predict_slide` while sampling the process's RSS
   (`bench.common.TreeRssSampler`): the peak must stay under 2 GB.
3. Measures tiles/s of slide → answer against the model's bare batch throughput on the same
   tiles (already read, resized and encoded: only `serving_default`), as a ratio measured in
   the same run, both after the model's first call (its graph set-up, reported apart); the
   two are alternated `--rounds` times and the best of each compared.
4. Wall time of slide → answer on the real SVS and on one re-assembled IDC patient.

Without `--model` an untrained MIL model with the default architecture is exported
(`bench.serving`'s export; untrained weights cost the same compute) and tiled at the IDC
scale (50 px at 4 µm/px, 200 µm tiles). Writes `bench/results/slides.json`.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import sys
import tempfile
import time

import histopath  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np

from bench.common import TreeRssSampler, cpu_name, write_json

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "slides.json"
MEMORY_LIMIT_MIB = 2048
ISLANDS = 8  # tissue islands on the giant slide
GLASS = 243


def _islands(width: int, height: int, seed: int) -> np.ndarray:
    """(cx, cy, rx, ry) of the tissue islands, level-0 pixels."""
    rng = np.random.default_rng(seed)
    radius = min(width, height) * 0.07
    centres = rng.uniform([0.15 * width, 0.15 * height], [0.85 * width, 0.85 * height], (ISLANDS, 2))
    radii = rng.uniform(0.5 * radius, radius, (ISLANDS, 2))
    return np.concatenate([centres, radii], axis=1)


def _texture_bank(seed: int, count: int = 8, side: int = 256) -> list[np.ndarray]:
    """H&E-like textured squares: pink stroma with dark purple nuclei."""
    rng = np.random.default_rng(seed)
    bank = []
    for _ in range(count):
        tile = np.array((225, 150, 190), np.float32) + rng.normal(0, 18, (side, side, 3))
        ys, xs = np.mgrid[0:side, 0:side]
        for cx, cy in rng.uniform(0, side, (40, 2)):
            nucleus = (xs - cx) ** 2 + (ys - cy) ** 2 < rng.uniform(9, 36)
            tile[nucleus] = (120, 60, 150)
        bank.append(np.clip(tile, 0, 255).astype(np.uint8))
    return bank


def glass_slide_region(width: int, height: int, seed: int = 0):
    """A `slide_writer.RegionFn` of a glass slide with textured elliptical tissue islands."""
    islands, bank = _islands(width, height, seed), _texture_bank(seed)

    def region(downsample: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        out = np.full((h, w, 3), GLASS, np.uint8)
        x0, y0 = x * downsample, y * downsample
        for index, (cx, cy, rx, ry) in enumerate(islands):
            if x0 > cx + rx or x0 + w * downsample < cx - rx or y0 > cy + ry or y0 + h * downsample < cy - ry:
                continue
            ys, xs = np.mgrid[0:h, 0:w]
            inside = ((x0 + xs * downsample - cx) / rx) ** 2 + ((y0 + ys * downsample - cy) / ry) ** 2 < 1
            texture = bank[(x // w + y // h + index) % len(bank)][:h, :w]
            out[inside] = texture[inside]
        return out

    return region


def _export_model(folder: pathlib.Path) -> pathlib.Path:
    from bench.serving import _export_tiny_mil

    version = folder / "mil" / "1"
    _export_tiny_mil(version)
    return version


def _warm_up(loaded, tile_px: int) -> float:
    """Seconds of the model's first call (graph set-up), kept out of the rates compared."""
    from PIL import Image

    from histopath.images import encode_png
    from histopath.models import exported

    started = time.perf_counter()
    exported.predict_bytes(loaded, [encode_png(Image.new("RGB", (tile_px, tile_px), (220, 120, 170)))] * 2)
    return round(time.perf_counter() - started, 2)


def _prepare_tiles(slide_path: str, scale, batch_size: int, limit: int) -> list[list[bytes]]:
    """The model inputs of the slide's first `limit` tiles, batch by batch, as slide → answer makes them."""
    from histopath import slides, tiling
    from histopath.evaluation.slide_predict import tile_inputs

    with slides.open_slide(slide_path) as slide:
        tiler = tiling.Tiler(slide, scale.tile_um, scale.tile_px)
        prepared = []
        for batch in tiling.batches(iter(tiler), batch_size):
            prepared.append(tile_inputs(batch, scale.tile_px))
            if sum(map(len, prepared)) >= limit:
                break
    return prepared


def _bare_throughput(loaded, prepared: list[list[bytes]]) -> dict:
    """Tiles/s of `serving_default` alone on prepared tiles."""
    from histopath.models import exported

    started = time.perf_counter()
    for inputs in prepared:
        exported.predict_bytes(loaded, inputs)
    seconds = time.perf_counter() - started
    count = sum(map(len, prepared))
    return {"tiles": count, "seconds": round(seconds, 2), "tiles_per_second": round(count / seconds, 1)}


def _call(loaded, path: str, output: str, scale, batch_size: int) -> dict:
    """Slide → answer wall time, and apart from it the per-slide fixed part (thumbnail and
    tissue mask, timed on its own) so that the per-tile rate can be compared with the bare one."""
    from histopath import slides, tiling
    from histopath.evaluation.slide_predict import predict_slide

    started = time.perf_counter()
    answer = predict_slide(loaded, path, output, scale=scale, batch_size=batch_size)
    seconds = time.perf_counter() - started
    with slides.open_slide(path) as slide:
        started = time.perf_counter()
        tiling.tissue_map(slide)
        fixed = time.perf_counter() - started
    tiles = answer["tiles_called"]
    return {"slide": path, "size": [answer["width"], answer["height"]], "tiles_called": tiles,
            "qc": answer["qc"], "wall_seconds": round(seconds, 2), "tiles_per_second": round(tiles / seconds, 1),
            "thumbnail_and_mask_seconds": round(fixed, 2),
            "tiles_per_second_after_mask": round(tiles / max(seconds - fixed, 1e-6), 1),
            "probability": answer["probability"]}


def _real_slides(loaded, work: pathlib.Path, scale, batch_size: int) -> dict:
    from histopath.data.idc_slides import reassemble_patient

    shared = pathlib.Path(os.environ.get("HISTOPATH_SHARED_DATA", REPO.parent / "shared" / "data"))
    results = {}
    svs = shared / "wsi" / "cmu_small_region.svs"
    if svs.exists():
        results["real_svs"] = _call(loaded, str(svs), str(work / "out"), scale, batch_size)
    patient = shared / "idc" / "8863"
    if patient.is_dir():
        started = time.perf_counter()
        summary = reassemble_patient(str(patient), str(work / "idc"))
        results["idc_reassembly_seconds"] = round(time.perf_counter() - started, 2)
        results["idc_slide"] = _call(loaded, str(summary["slide"]), str(work / "out"), scale, batch_size)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.slides", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="exported model (default: an untrained default MIL export)")
    parser.add_argument("--width", type=int, default=100_000)
    parser.add_argument("--height", type=int, default=80_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="slide → answer and bare runs, alternated; the best "
                        "of each is compared")
    parser.add_argument("--slide", help="keep the generated slide here, and reuse it when it is already there "
                        "(default: written to a temporary folder and deleted)")
    args = parser.parse_args(argv)

    from histopath import slide_writer, slides
    from histopath.evaluation.slide_predict import ModelScale, model_scale
    from histopath.models import exported

    with tempfile.TemporaryDirectory(prefix="bench-slides-") as temporary:
        work = pathlib.Path(temporary)
        slide_path = pathlib.Path(args.slide) if args.slide else work / "glass.tif"
        started = time.perf_counter()
        if slide_path.exists():
            with slides.open_slide(slide_path) as existing:
                if existing.dimensions != (args.width, args.height):
                    parser.error(f"{slide_path} is {existing.dimensions}, not {args.width}x{args.height}")
                levels = [(int(lv.downsample), lv.width, lv.height) for lv in existing.levels]
            write_seconds = None
        else:
            levels = slide_writer.write_pyramid(slide_path, args.width, args.height,
                                                glass_slide_region(args.width, args.height), mpp=0.25)
            write_seconds = round(time.perf_counter() - started, 1)
        print(f"{'wrote' if write_seconds else 'reused'} {slide_path} ({slide_path.stat().st_size / 2**20:.0f} MiB, "
              f"{len(levels)} levels){f' in {write_seconds} s' if write_seconds else ''}", flush=True)
        model_dir = args.model or str(_export_model(work / "model"))
        with TreeRssSampler(interval=0.2) as sampler:
            loaded = exported.load(model_dir)
            scale = (model_scale(loaded.model_info) if args.model else
                     ModelScale(4.0, 50, "IDC scale: 50 px at 4 µm/px"))
            warm_up = _warm_up(loaded, scale.tile_px)
            calls = [_call(loaded, str(slide_path), str(work / "out"), scale, args.batch_size)]
        memory = sampler.as_dict()
        print(f"giant slide: {calls[0]['tiles_called']} tiles in {calls[0]['wall_seconds']} s, "
              f"peak RSS {memory['peak_mib']} MiB", flush=True)
        prepared = _prepare_tiles(str(slide_path), scale, args.batch_size, limit=100_000)
        bares = [_bare_throughput(loaded, prepared)]
        for _ in range(args.rounds - 1):  # alternated, so that a change of load on a shared machine hits both
            calls.append(_call(loaded, str(slide_path), str(work / "out"), scale, args.batch_size))
            bares.append(_bare_throughput(loaded, prepared))
        giant = max(calls, key=lambda c: c["tiles_per_second"])
        bare = max(bares, key=lambda b: b["tiles_per_second"])
        real = _real_slides(loaded, work, scale, args.batch_size)
    result = {
        "benchmark": "slides", "cpu": cpu_name(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "model": args.model or "untrained MIL (default MilConfig) export", "tile_um": scale.tile_um,
        "tile_px": scale.tile_px, "generated_slide": {"width": args.width, "height": args.height, "mpp": 0.25,
                                                      "levels": len(levels), "write_seconds": write_seconds},
        "model_first_call_seconds": warm_up, "giant_slide_call": giant, "peak_memory": memory,
        "memory_limit_mib": MEMORY_LIMIT_MIB, "memory_ok": memory["peak_mib"] < MEMORY_LIMIT_MIB,
        "bare_batch_throughput": bare, "rounds": args.rounds,
        "all_rounds_tiles_per_second": {"slide_to_answer": [c["tiles_per_second"] for c in calls],
                                        "bare": [b["tiles_per_second"] for b in bares]},
        "slide_to_bare_ratio": round(giant["tiles_per_second"] / bare["tiles_per_second"], 3),
        "slide_to_bare_ratio_after_mask": round(giant["tiles_per_second_after_mask"] / bare["tiles_per_second"], 3),
        "load_average_1min": round(os.getloadavg()[0], 2),
        **real,
    }
    write_json(RESULTS, result)
    print(f"slide→answer {giant['tiles_per_second']} tiles/s vs bare {bare['tiles_per_second']} tiles/s "
          f"(ratio {result['slide_to_bare_ratio']}); {RESULTS}")
    return 0 if result["memory_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
