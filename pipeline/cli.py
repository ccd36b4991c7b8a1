"""`histopath run` and `histopath compile`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

from histopath.pipeline.config import DATASETS, MODEL_KINDS, PipelineConfig, load_config_file


def _model_list(text: str) -> tuple[str, ...]:
    models = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in models if m not in MODEL_KINDS]
    if not models or unknown:
        raise argparse.ArgumentTypeError(f"choose from {','.join(MODEL_KINDS)}; got {text!r}")
    return models


def _add_config_arguments(parser: argparse.ArgumentParser, *, need_data: bool) -> None:
    parser.add_argument("--dataset", choices=DATASETS, required=need_data, help="layout of the data folder")
    parser.add_argument("--data", dest="data_dir", required=need_data,
                        help="raw image folder (BreaKHis_v1 tree or IDC tree) or a folder made by `histopath ingest`")
    parser.add_argument("--output", dest="output_dir", required=need_data,
                        help="run folder: records, pipeline root, metadata, serving/, report/")
    parser.add_argument("--models", type=_model_list, help="comma-separated subset of densenet,mil (default both)")
    parser.add_argument("--epochs", type=int, help="training epochs per phase (overrides the config file)")
    parser.add_argument("--image-size", type=int, help="Transform output size in pixels (default 224)")
    parser.add_argument("--stain-normalization", action="store_true", default=None,
                        help="Transform scales each image's H and E stain to a reference amount")
    parser.add_argument("--slide-context-sigma", type=float, metavar="PATCHES",
                        help="IDC: the Trainers also choose a threshold for patch probabilities averaged over the "
                        "slide (Gaussian width in patches, e.g. 1.5; default 0 = off)")
    parser.add_argument("--config", help="JSON file of PipelineConfig fields (flags override it)")
    parser.add_argument("--model-name", help="TF Serving model name (folder under serving/)")
    parser.add_argument("--serving-dir", help="push destination (default OUTPUT/serving)")
    parser.add_argument("--beam-arg", action="append", dest="beam_args", metavar="ARG",
                        help="Beam pipeline option for every Beam-powered component, repeatable, "
                        "e.g. --beam-arg=--direct_running_mode=in_memory or --beam-arg=--runner=DataflowRunner")
    parser.add_argument("--no-cache", action="store_true", help="re-run every component")


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """Defaults < --config file < flags."""
    values = load_config_file(args.config) if getattr(args, "config", None) else {}
    flag_values = {
        "dataset": args.dataset, "data_dir": args.data_dir, "output_dir": args.output_dir,
        "models": args.models, "image_size": args.image_size, "model_name": args.model_name,
        "serving_dir": args.serving_dir, "stain_normalization": getattr(args, "stain_normalization", None),
        "slide_context_sigma": getattr(args, "slide_context_sigma", None),
        "beam_args": tuple(args.beam_args) if args.beam_args else None,
    }
    values.update({key: value for key, value in flag_values.items() if value is not None})
    if args.epochs is not None:
        # both DenseNet phases (head, then fine-tuning) and the MIL model
        values["training"] = {
            **values.get("training", {}), "epochs": args.epochs, "fine_tune_epochs": args.epochs,
        }
    if args.no_cache:
        values["enable_cache"] = False
    return PipelineConfig.from_dict(values).validate()


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from histopath.pipeline.local_runner import run_local

    config = config_from_args(args)
    report = run_local(config)
    summary = config.report_dir / "summary.md"
    print(summary.read_text() if summary.exists() else json.dumps(report, indent=2))
    print(f"report: {config.report_dir}")
    return 0


def _compile(args: argparse.Namespace) -> int:
    from histopath.pipeline.kubeflow_runner import compile_kubeflow

    if args.runner != "kubeflow":
        print(f"unsupported runner {args.runner}", file=sys.stderr)
        return 2
    config = config_from_args(args)
    config = dataclasses.replace(config, records_dir=config.data_dir)  # ingested in the cluster
    path = compile_kubeflow(config, args.pipeline_output, image=args.image)
    print(f"wrote {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `run` and `compile`."""
    run = subparsers.add_parser(
        "run", help="run the whole TFX pipeline locally (ingest, validate, transform, train, evaluate, push)",
        description="Runs ExampleGen → StatisticsGen → SchemaGen → ExampleValidator → Transform → "
        "Trainers (DenseNet201, attention MIL) → Evaluators → winner selection → Pusher with "
        "LocalDagRunner and an SQLite ML-Metadata store under OUTPUT. Exit code 3: no model "
        "passed its thresholds, nothing was pushed.",
    )
    _add_config_arguments(run, need_data=True)
    run.set_defaults(handler=_run)

    compile_parser = subparsers.add_parser(
        "compile", help="compile the pipeline for Kubeflow Pipelines (pipeline-spec JSON)",
        description="Compiles the same pipeline with KubeflowV2DagRunner. Paths in the config "
        "(--data, --output) must be reachable from the cluster (gs://... or a mounted volume).",
    )
    compile_parser.add_argument("--runner", choices=["kubeflow"], default="kubeflow")
    compile_parser.add_argument("--output", dest="pipeline_output", required=True, help="pipeline.json to write")
    compile_parser.add_argument("--image", default="histopath-tfx-pipeline:latest",
                                help="container image of the components (built from pipeline/Dockerfile)")
    compile_parser.add_argument("--pipeline-root", dest="output_dir", default="/pipeline",
                                help="run folder inside the cluster (default /pipeline)")
    compile_parser.add_argument("--dataset", choices=DATASETS, default="breakhis")
    compile_parser.add_argument("--data", dest="data_dir", default="/data/records",
                                help="ingested records inside the cluster (default /data/records)")
    for flag, kwargs in {
        "--models": dict(type=_model_list), "--epochs": dict(type=int), "--image-size": dict(type=int),
        "--config": {}, "--model-name": {}, "--serving-dir": {},
        "--stain-normalization": dict(action="store_true", default=None),
        "--slide-context-sigma": dict(type=float),
    }.items():
        compile_parser.add_argument(flag, **kwargs)
    compile_parser.add_argument("--beam-arg", action="append", dest="beam_args", metavar="ARG")
    compile_parser.add_argument("--no-cache", action="store_true")
    compile_parser.set_defaults(handler=_compile)
