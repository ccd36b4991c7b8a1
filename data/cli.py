"""`histopath ingest` and `histopath make-sample`: argument parsing only.

The work is done by `histopath.data.ingest.ingest` and `histopath.data.sample.make_sample`,
imported inside the handlers so that `histopath --help` stays instant.
"""

from __future__ import annotations

import argparse
import json
import os

from histopath.argtypes import positive_int
from histopath.data.layouts import DATASETS



def _bag_size(text: str) -> int:
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"a bag region is at least 2x2 patches, got {value}")
    return value


def _run_ingest(args: argparse.Namespace) -> int:
    from histopath import fileio
    from histopath.console import Console
    from histopath.data.ingest import ingest

    output = fileio.absolute(args.output)
    log_dir = None if fileio.is_uri(output) else os.path.dirname(output)
    log_name = f"{os.path.basename(output.rstrip('/'))}.ingest"
    with Console(log_dir, verbose=args.verbose, first_log=log_name) as console:
        console.line(f"ingest {args.dataset} from {args.source}")
        manifest = ingest(
            dataset=args.dataset,
            source=args.source,
            output=args.output,
            splits=args.splits,
            seed=args.seed,
            magnifications=args.magnifications,
            shards=args.shards,
            beam_args=args.beam_arg,
            overwrite=args.overwrite,
            compression_level=args.compression_level,
            max_pixels=int(args.max_megapixels * 1_000_000),
            bag_size=args.bag_size,
        )
        unit = f"{args.bag_size}x{args.bag_size}-patch bags" if args.bag_size else "images"
        lines = []
        for name, split in manifest["splits"].items():
            counts = ", ".join(f"{n} {label}" for label, n in split["label_counts"].items())
            lines.append(f"{name}: {split['num_examples']} {unit} ({counts}) from "
                         f"{split['num_patients']} patients in {len(split['shards'])} shard(s)")
        if manifest["num_skipped"]:
            lines.append(f"skipped {manifest['num_skipped']} file(s); reasons in the manifest:")
            lines += [f"  {item['path']}: {item['reason']}" for item in manifest["skipped"][:10]]
            if manifest["num_skipped"] > 10:
                lines.append(f"  ... and {manifest['num_skipped'] - 10} more")
        lines.append(f"wrote {fileio.join(output, 'manifest.json')} ({manifest['seconds']:.1f} s)"
                     + (f"; log: {console.log_path(log_name)}" if log_dir else ""))
        console.write("\n".join(lines))
    return 0


def _run_make_sample(args: argparse.Namespace) -> int:
    from histopath.data.sample import make_sample

    summary = make_sample(
        dataset=args.dataset,
        output=args.output,
        patients=args.patients,
        images_per_patient=args.images_per_patient,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    print(json.dumps(summary, indent=2))
    return 0


def _run_idc_slides(args: argparse.Namespace) -> int:
    from histopath.data.idc_slides import reassemble

    summaries = reassemble(args.source, args.output, patients=args.patient or None, mpp=args.mpp,
                           compression="lossless" if args.lossless else "jpeg")
    for summary in summaries:
        print(json.dumps({key: summary[key] for key in ("patient", "slide", "labels", "label", "patches",
                                                         "positive", "width", "height")}))
        for skipped in summary["skipped"]:
            print(f"  skipped {skipped['file']}: {skipped['reason']}")
    return 0


def register(subparsers) -> None:
    """Adds the `ingest`, `make-sample` and `idc-slides` sub-commands."""
    _register_ingest(subparsers)
    _register_make_sample(subparsers)
    _register_idc_slides(subparsers)


def _register_ingest(subparsers) -> None:
    ingest = subparsers.add_parser(
        "ingest",
        help="turn a BreakHis or IDC folder into patient-disjoint TFRecord splits",
        description=(
            "Reads a BreakHis (BreaKHis_v1 tree) or IDC (<patient>/<class>/...png) folder, "
            "splits it by patient (balanced by class, deterministic for a cohort and seed), and writes gzip TFRecord "
            "shards OUTPUT/<split>/data-NNNNN-of-NNNNN.tfrecord.gz (one tf.train.Example per "
            "image, the image bytes as stored) plus OUTPUT/manifest.json with counts, "
            "patients, shards and every skipped file with its reason. Runs on Apache Beam "
            "(local multi-process DirectRunner with 2 workers unless --beam-arg says "
            "otherwise)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ingest.add_argument("--dataset", required=True, choices=DATASETS,
                        help="layout of the source folder")
    ingest.add_argument("--source", required=True, metavar="DIR",
                        help="the data set folder (BreakHis: the folder holding BreaKHis_v1 "
                        "or any folder inside it)")
    ingest.add_argument("--output", required=True, metavar="DIR",
                        help="folder to create (written to a temporary sibling, then renamed)")
    ingest.add_argument("--splits", default="train=0.7,eval=0.15,test=0.15",
                        metavar="NAME=FRACTION,...",
                        help="split names and fractions of the images (sum to 1)")
    ingest.add_argument("--seed", type=int, default=42, help="seed of the patient split")
    ingest.add_argument("--magnifications", default=None, metavar="40,100,200,400",
                        help="BreakHis only: keep these magnifications (default: all)")
    ingest.add_argument("--shards", type=positive_int, default=None, metavar="N",
                        help="shard files per split (default: one per ~2000 images)")
    ingest.add_argument("--beam-arg", action="append", default=[], metavar="ARG",
                        help="a Beam pipeline option, repeatable, e.g. "
                        "--beam-arg=--direct_num_workers=4 or --beam-arg=--runner=...")
    ingest.add_argument("--overwrite", action="store_true",
                        help="replace OUTPUT if it exists (swapped in when complete)")
    ingest.add_argument("--compression-level", type=int, default=0, choices=range(10),
                        metavar="0-9", help="gzip level of the shards; the encoded images do "
                        "not compress (level 1 saved 0.8%% on IDC at ~2x the CPU), so 0 "
                        "writes gzip files without compressing")
    ingest.add_argument("--max-megapixels", type=float, default=50.0,
                        help="skip larger images as decompression bombs")
    ingest.add_argument("--verbose", action="store_true",
                        help="show every log line (default: in OUTPUT.ingest.log beside OUTPUT)")
    ingest.add_argument("--bag-size", type=_bag_size, default=None, metavar="K",
                        help="IDC only: write one record per region of KxK patches of a "
                        "patient's slide (a spatial MIL bag) instead of one per patch: a "
                        "K*50 px PNG mosaic of the region (white where there is no patch), "
                        "label 1 if any patch is IDC-positive, plus the per-patch label grid; "
                        "train the MIL model with image_size=50*K, tile_size=50; "
                        "None = one record per patch")
    ingest.set_defaults(handler=_run_ingest)


def _register_make_sample(subparsers) -> None:
    sample = subparsers.add_parser(
        "make-sample",
        help="write a small synthetic H&E-like data set in the BreakHis or IDC layout",
        description=(
            "Writes a small SYNTHETIC data set (not real tissue) in the real BreakHis or IDC "
            "layout, for demos and tests: H&E-like colours, benign images with sparse small "
            "round nuclei, malignant ones with dense, large, irregular, dark nuclei; IDC "
            "patients as contiguous 50x50 patch grids with clustered positive patches. "
            "Seeded and deterministic."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sample.add_argument("--dataset", required=True, choices=DATASETS,
                        help="layout to write")
    sample.add_argument("--output", required=True, metavar="DIR", help="folder to create")
    sample.add_argument("--patients", type=positive_int, default=12,
                        help="number of patients (half benign / IDC-negative-only)")
    sample.add_argument("--images-per-patient", type=positive_int, default=None,
                        help="images (BreakHis) or patches (IDC) per patient "
                        "(default: 8 for BreakHis, 64 for IDC)")
    sample.add_argument("--seed", type=int, default=0, help="random seed")
    sample.add_argument("--overwrite", action="store_true",
                        help="replace OUTPUT if it exists")
    sample.set_defaults(handler=_run_make_sample)


def _register_idc_slides(subparsers) -> None:
    slides = subparsers.add_parser(
        "idc-slides",
        help="re-assemble IDC patients into pyramidal TIFF slides with per-patch labels",
        description=(
            "Pastes each IDC patient's 50x50 patches back at the offsets in their names (on white "
            "glass) and writes OUTPUT/<patient>.tif, a pyramidal tiled TIFF with its microns per "
            "pixel, OUTPUT/<patient>.labels.csv (x,y,width,height,label,file per patch, level-0 "
            "pixels) and OUTPUT/slides.csv (slide,patient,label: 1 when any patch is IDC-positive)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    slides.add_argument("--source", required=True, metavar="DIR", help="IDC folder (<patient>/<class>/...png)")
    slides.add_argument("--output", required=True, metavar="DIR", help="folder for the slides (created)")
    slides.add_argument("--patient", action="append", default=[], metavar="ID",
                        help="only this patient (repeatable; default: every patient folder)")
    slides.add_argument("--mpp", type=float, default=4.0,
                        help="microns per pixel written into the slides (IDC: 40x downsampled 16:1)")
    slides.add_argument("--lossless", action="store_true", help="deflate instead of JPEG (quality 90) tiles")
    slides.set_defaults(handler=_run_idc_slides)
