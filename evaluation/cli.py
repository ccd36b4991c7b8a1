"""`histopath evaluate` and `histopath predict`: a pushed model on image folders/files."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from typing import Optional

from histopath.argtypes import non_negative_int, positive_int
from histopath.data.layouts import PIPELINE_DATASETS, SLIDES
from histopath.errors import ConfigError

MODEL_HELP = ("pushed model: a <name>/<version> folder (holds saved_model.pb) or its parent <name> "
              "(then the newest integer version is used)")


def _paragraphs(*paragraphs: str) -> str:
    return "\n\n".join(textwrap.fill(p, 88) for p in paragraphs)


def _evaluate(args: argparse.Namespace) -> int:
    from histopath.console import Console
    from histopath.data.manifest import patients_from_manifest
    from histopath.evaluation import evaluate as evaluation

    patients = None
    split = None
    if args.split_manifest:
        split = args.split or "test"
        patients = patients_from_manifest(args.split_manifest, split, args.dataset)
        if not patients:
            raise ConfigError(f"split {split!r} of {args.split_manifest} lists no patient")
    elif args.split is not None:
        raise ConfigError("--split needs --split-manifest")
    log_dir = os.path.dirname(os.path.abspath(args.output))
    if args.dataset == SLIDES:
        return _evaluate_slides(args, patients, split, log_dir)
    with Console(log_dir, verbose=args.verbose, first_log=_stem(args.output)) as console:
        result = evaluation.evaluate_model(
            args.model, args.data, args.dataset, patients=patients, bootstrap=args.bootstrap,
            seed=args.seed, batch_size=args.batch_size, progress=_progress_lines("predicting"))
        if args.split_manifest:
            result["data"]["split_manifest"] = os.path.abspath(args.split_manifest)
            result["data"]["split"] = split
        written = evaluation.write_evaluation(result, args.output)
        model = result["model"]
        lines = [f"{model['model_name']} v{model['model_version']} (threshold {result['decision_threshold']:.3f}) "
                 f"on {result['data']['data_dir']}"] + evaluation.summary_lines(result)
        missing = result["data"]["patients_not_found"]
        if missing:
            lines.append(f"warning: {len(missing)} patient(s) of the split have no image in {args.data}: "
                         f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
        lines += [f"warning: {warning}" for warning in result["bootstrap"]["warnings"]]
        if result["failed_images"]:
            lines.append(f"{len(result['failed_images'])} image(s) could not be predicted and were left out, "
                         f"e.g. {result['failed_images'][0]['error']}")
        lines += [f"{key}: {path}" for key, path in written.items()]
        lines.append(f"log: {console.log_path(_stem(args.output))}")
        console.write("\n".join(lines))
    return 0


def _evaluate_slides(args: argparse.Namespace, patients: Optional[list], split: Optional[str], log_dir: str) -> int:
    """`evaluate --dataset slides`: tile- and slide-level metrics (`slide_evaluate`)."""
    from histopath import fileio
    from histopath.console import Console
    from histopath.evaluation import slide_evaluate

    with Console(log_dir, verbose=args.verbose, first_log=_stem(args.output)) as console:
        result = slide_evaluate.evaluate_slides(args.model, args.data, args.output, patients=patients,
                                                bootstrap=args.bootstrap, seed=args.seed,
                                                batch_size=max(args.batch_size, 64))
        if args.split_manifest:
            result["data"]["split_manifest"] = os.path.abspath(args.split_manifest)
            result["data"]["split"] = split
        fileio.write_json(args.output, result)
        model = result["model"]
        lines = [f"{model['model_name']} v{model['model_version']} on {result['data']['slides']} slide(s) of "
                 f"{args.data} (slides: {result['aggregation']['describe']}, threshold "
                 f"{result['aggregation']['threshold']:.3f})"] + slide_evaluate.summary_lines(result)
        lines += [f"warning: {row['slide']}: {row['error']}" for row in result["failed_slides"]]
        lines += [f"report: {args.output}", f"slides: {os.path.splitext(args.output)[0]}.slides/"]
        console.write("\n".join(lines))
    return 1 if result["failed_slides"] else 0


def _stem(path: str) -> str:
    name = os.path.basename(path)
    return name[:-5] if name.lower().endswith(".json") else name


def _progress_lines(what: str):
    """A tqdm-like factory for `evaluate_model`: a progress line every 10 % of the images."""
    from histopath.console import progress_logger

    class Lines:
        def __init__(self, total: int):
            self.total, self.done, self.shown = total, 0, 0

        def update(self, count: int) -> None:
            self.done += count
            step = self.done * 10 // max(self.total, 1)
            if step > self.shown and self.total >= 100:
                self.shown = step
                progress_logger().info(f"  {what}: {self.done:,} of {self.total:,} images")

        def close(self) -> None:
            pass

    return Lines


def _predict(args: argparse.Namespace) -> int:
    from histopath.console import Console
    from histopath.evaluation.predict import add_slide_context, predict_paths, slide_context_setting
    from histopath.models.exported import read_model_info
    from histopath.slides import is_uri, looks_like_slide

    slide_inputs = [p for p in args.inputs if is_uri(p) or (os.path.isfile(p) and looks_like_slide(p))]
    image_inputs = [p for p in args.inputs if p not in slide_inputs]
    if slide_inputs and not args.output:
        raise ConfigError(f"{slide_inputs[0]} is a whole slide: give --output DIR for its answer, heat-map and GeoJSON")
    failures = 0
    with Console(None, verbose=args.verbose) as console:
        info = None
        if args.slide_context:  # a model without a setting is refused before anything is predicted
            info = read_model_info(args.model)
            slide_context_setting(info)
        rows = predict_paths(args.model, image_inputs, heatmap_dir=args.heatmap_dir,
                             batch_size=args.batch_size) if image_inputs else iter(())
        if info is not None:  # every patch first: each answer depends on its neighbours'
            rows = add_slide_context(list(rows), info)
        for row in rows:
            failures += int("error" in row or "heatmap_error" in row or "context_error" in row)
            console.write(json.dumps(row))
        if slide_inputs:
            from histopath.evaluation.slide_predict import predict_slides

            for answer in predict_slides(args.model, slide_inputs, args.output, mpp=args.mpp,
                                         model_mpp=args.model_mpp, tile_px=args.tile_px,
                                         batch_size=max(args.batch_size, 64), top_fraction=args.top_fraction):
                failures += int("error" in answer)
                console.write(json.dumps(answer))
    if failures:
        print(f"histopath predict: {failures} file(s) failed (see the \"error\" / \"context_error\" lines)",
              file=sys.stderr)
        return 1
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `evaluate` and `predict`."""
    _register_evaluate(subparsers)
    _register_predict(subparsers)


def _register_evaluate(subparsers: argparse._SubParsersAction) -> None:
    from histopath.evaluation.patient_rules import PATIENT_LABEL_RULE, PATIENT_SCORE_RULE

    evaluate = subparsers.add_parser(
        "evaluate", help="score a pushed model on a BreakHis/IDC folder (image- and patient-level, bootstrap CIs)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_paragraphs(
            "Predicts every image of a data folder in the real BreakHis or IDC layout through the "
            "model's serving_default signature and writes a JSON report with image-level and "
            "patient-level AUC, accuracy, balanced accuracy, sensitivity, specificity, F1 and Brier "
            "score, each with a 95% confidence interval from a patient (cluster) bootstrap: patients "
            "are resampled with replacement and all their images kept. Also: the confusion matrix at "
            "the model's stored decision threshold, a per-patient table, calibration bins, and the "
            "plots FILE.roc.png and FILE.calibration.png next to the JSON (FILE without .json).",
            f"Rules: {PATIENT_SCORE_RULE}; {PATIENT_LABEL_RULE}.",
            "Evaluate on held-out patients with --split-manifest OUTPUT/manifest.json --split test "
            "(the manifest written by `histopath ingest`).",
            "IDC models trained with slide_context_sigma are also scored with slide context (each "
            "patch's probability averaged over its neighbours on the patient's slide, at the model's "
            "slide-context threshold): the report's slide_context block, context_probability per image, "
            "and a third ROC curve.",
            "--dataset slides: every slide is called as `histopath predict` calls it (outputs in "
            "FILE.slides/), then scored per tile against its annotations (GeoJSON, or the labelled "
            "rectangles of `histopath idc-slides`) and per slide against slides.csv, with patient-bootstrap "
            "intervals at both levels."
        ),
    )
    evaluate.add_argument("--model", required=True, help=MODEL_HELP)
    evaluate.add_argument("--data", required=True, help="data folder in the real layout (BreaKHis_v1 tree or IDC tree)")
    evaluate.add_argument("--dataset", required=True, choices=PIPELINE_DATASETS,
                          help="layout of --data (slides: a slide folder with slides.csv or a folder per label, "
                               "docs/slides.md)")
    evaluate.add_argument("--output", default="evaluation.json", help="JSON report to write (default evaluation.json)")
    evaluate.add_argument("--split-manifest", metavar="MANIFEST",
                          help="manifest.json of `histopath ingest`: evaluate only the patients of --split")
    evaluate.add_argument("--split", default=None, help="split of --split-manifest (default test)")
    evaluate.add_argument("--batch-size", type=positive_int, default=32, help="images per model call (default 32)")
    evaluate.add_argument("--bootstrap", type=non_negative_int, default=1000,
                          help="patient-bootstrap resamples for the confidence intervals (default 1000; 0 = none)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    evaluate.add_argument("--verbose", action="store_true", help="show every log line (default: in FILE.log)")
    evaluate.set_defaults(handler=_evaluate)


def _register_predict(subparsers: argparse._SubParsersAction) -> None:
    predict = subparsers.add_parser(
        "predict", help="predict image files/folders with a pushed model (one JSON line per image)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_paragraphs(
            "Prints one JSON line per image: file, probability (of malignant), label, label_name, "
            "uncertainty (1 at the model's threshold, 0 at probability 0 or 1), not_sure (inside the "
            "model's \"not sure\" band: the answer needs a pathologist's review), model_name, "
            "model_version. Folders are searched recursively for .png/.jpg/.jpeg/.tif "
            "files. A missing or corrupt file prints a line with an \"error\" naming it; the other "
            "images are still predicted and the exit code is 1 at the end. With --heatmap-dir, MIL "
            "models also write the attention heat-map over each image as <name>.heatmap.png and, "
            "with an instance classifier, each tile's probability as <name>.tiles.png. With "
            "--slide-context (IDC patches of models trained with slide_context_sigma), every line also "
            "gets context_probability, context_label and context_label_name: the patch answered from "
            "its slide neighbourhood, the patches of one patient (read from the file names) forming a slide.",
            "Whole slides (.svs, .ndpi, .mrxs, .scn, .bif, a tiled .tif, or a URI) need --output: each is "
            "tiled in microns at the model's scale (tissue found on a thumbnail, tiles checked for "
            "background, pen and blur), called tile by tile, and answered by the mean of its highest tile "
            "probabilities (or by the aggregation its Trainer chose); one JSON line per slide (with "
            "uncertainty and not_sure, as for an image), and OUT/<slide id>/ holds slide.json, heatmap.png, "
            "tissue.png and tiles.geojson (QuPath: File > Import objects)."
        ),
    )
    predict.add_argument("--model", required=True, help=MODEL_HELP)
    predict.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR_OR_SLIDE",
                         help="image files and/or folders, and whole slides (.svs, .ndpi, .mrxs, .scn, .bif, tiled "
                              ".tif, or a gs:// URI)")
    predict.add_argument("--output", metavar="DIR",
                         help="slides: write OUT/<slide id>/slide.json, heatmap.png, tissue.png, tiles.geojson")
    predict.add_argument("--mpp", type=float, default=None,
                         help="slides: microns per pixel of slides whose file does not say it")
    predict.add_argument("--model-mpp", type=float, default=None,
                         help="slides: microns per pixel of the model's training images (default: model_info "
                              "\"mpp\", or 4.0 for an IDC model)")
    predict.add_argument("--tile-px", type=positive_int, default=None,
                         help="slides: pixels of a tile as the model's training images had them (default: "
                              "model_info \"tile_px\", 50 for IDC, else the model's image size)")
    predict.add_argument("--top-fraction", type=float, default=None,
                         help="slides: the slide probability is the mean of this share of its highest tile "
                              "probabilities (at least one tile); default: the aggregation the model's Trainer "
                              "chose (model_info slide_aggregation), else 0.05")
    predict.add_argument("--heatmap-dir", help="write MIL attention heat-maps (PNG) here")
    predict.add_argument("--batch-size", type=positive_int, default=16, help="images per model call (default 16)")
    predict.add_argument("--verbose", action="store_true", help="show the libraries' log lines too")
    predict.add_argument("--slide-context", action="store_true",
                         help="IDC patches: also answer each patch from its slide neighbourhood (patients and "
                              "positions from the IDC file names; needs a model trained with slide_context_sigma)")
    predict.set_defaults(handler=_predict)
