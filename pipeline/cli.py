"""`histopath run`, `histopath compile` and `histopath presets`: argument parsing only."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from histopath.argtypes import non_negative_int
from histopath.errors import ConfigError
from histopath.data.layouts import PIPELINE_DATASETS
from histopath.models import registry, stain_methods


def _model_list(text: str) -> tuple[str, ...]:
    models = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in models if m not in registry.KINDS]
    if not models or unknown:
        raise argparse.ArgumentTypeError(f"choose from {','.join(registry.names())}; got {text!r}")
    return models


def add_config_arguments(parser: argparse.ArgumentParser, *, need_data: bool) -> None:
    """The flags that set PipelineConfig fields (shared by `run` and `compile`)."""
    parser.add_argument("--dataset", choices=PIPELINE_DATASETS, required=need_data,
                        help="layout of the data (slides: docs/slides.md)")
    parser.add_argument("--tile-um", type=float, help="slides: tile edge in microns (default 200)")
    parser.add_argument("--tile-px", type=int, help="slides: tile edge in pixels as stored (default 50)")
    parser.add_argument("--data", dest="data_dir", required=need_data, metavar="DIR",
                        help="raw image root (a BreaKHis_v1 or IDC tree, or one folder per span: DIR/<span>/...), "
                        "local or gs://..., or a folder made by `histopath ingest`")
    parser.add_argument("--preset", help="named recipe to start from (default: the data set's own; "
                        "`histopath presets` lists them)")
    parser.add_argument("--config", help="JSON file of settings over the preset (flags override it)")
    parser.add_argument("--models", type=_model_list,
                        help=f"comma-separated model kinds to train and compare: {', '.join(registry.names())}")
    parser.add_argument("--epochs", type=non_negative_int, help="epochs of every training phase of every model")
    parser.add_argument("--image-size", type=int, help="Transform output size in pixels")
    parser.add_argument("--stain-normalization", nargs="?", const="od_scaling", choices=stain_methods.METHODS,
                        metavar="METHOD", help="Transform normalises each image's stain: "
                        f"{', '.join(stain_methods.METHODS)} (alone: od_scaling, H and E scaled to a reference amount)")
    parser.add_argument("--slide-context-sigma", type=float, metavar="PATCHES",
                        help="IDC: the Trainers also choose a threshold for patch probabilities averaged over the "
                        "slide (Gaussian width in patches; 0 = off)")
    parser.add_argument("--warm-start", dest="warm_start", metavar="WEIGHTS",
                        help="DenseNet201 backbone weights (.h5) to start from, e.g. an IDC run's "
                        "model_run/backbone_weights.h5")
    parser.add_argument("--span-window", metavar="all|N", help="train on every span (all) or the last N")
    parser.add_argument("--min-new-patients", type=non_negative_int, metavar="K",
                        help="retrain only when new spans bring at least K new patients (default 0: on every new span)")
    parser.add_argument("--seed", type=int, help="patient split and training seed")
    parser.add_argument("--model-name", help="TF Serving model name (folder under the serving dir)")
    parser.add_argument("--serving-dir", help="push destination (default OUTPUT/serving); a path or gs://...")
    parser.add_argument("--beam-arg", action="append", dest="beam_args", metavar="ARG",
                        help="Beam pipeline option for every Beam-powered component, repeatable, "
                        "e.g. --beam-arg=--direct_running_mode=in_memory or --beam-arg=--runner=DataflowRunner")
    parser.add_argument("--no-cache", action="store_true", help="re-run every component")


def config_from_args(args: argparse.Namespace, **fixed: Any):
    """defaults < preset < --config file < flags (and `fixed`), resolved once."""
    from histopath.errors import ConfigError
    from histopath.pipeline import presets
    from histopath.pipeline.config import load_config_file, resolve

    file_values = load_config_file(args.config) if getattr(args, "config", None) else {}
    dataset = args.dataset or file_values.get("dataset")
    preset = getattr(args, "preset", None) or file_values.get("preset") or presets.DEFAULT_PRESETS.get(dataset or "")
    layers = [presets.layer(preset)] if preset else []
    if preset and dataset and presets.get(preset).settings.get("dataset") not in (None, dataset):
        raise ConfigError(f"preset {preset} is for {presets.get(preset).settings['dataset']}, not {dataset}")
    flags = {
        "dataset": args.dataset, "data_dir": args.data_dir, "output_dir": args.output_dir, "models": args.models,
        "image_size": args.image_size, "model_name": args.model_name, "serving_dir": args.serving_dir,
        "stain_normalization": args.stain_normalization, "slide_context_sigma": args.slide_context_sigma,
        "beam_args": list(args.beam_args) if args.beam_args else None, "seed": args.seed,
        "span_window": args.span_window, "min_new_patients": args.min_new_patients,
        "enable_cache": False if args.no_cache else None,
        "tile_um": getattr(args, "tile_um", None), "tile_px": getattr(args, "tile_px", None),
    }
    flags = {key: value for key, value in flags.items() if value is not None}
    if args.epochs is not None:  # a later layer's shared training overrides every kind's own
        flags["training"] = {"epochs": args.epochs, "fine_tune_epochs": args.epochs}
    if args.warm_start:
        flags["densenet"] = {"weights": args.warm_start}
    config = resolve(*layers, file_values, flags, fixed)
    if preset:
        presets.check_needs(preset, config.to_dict())
    return config


def _run(args: argparse.Namespace) -> int:
    from histopath.console import Console
    from histopath.pipeline.local_runner import check_runnable, read_summary, run_local

    from histopath.pipeline import presets

    config = config_from_args(args)
    check_runnable(config)
    with Console(config.logs_dir, verbose=args.verbose, first_log="pipeline") as console:
        if config.preset and presets.get(config.preset).takes:
            console.write(f"preset {config.preset} takes {presets.get(config.preset).takes}")
        run_local(config, console=console)
        console.write(read_summary(config))
    return 0


def _compile(args: argparse.Namespace) -> int:
    from histopath.console import Console
    from histopath.pipeline.kubeflow_runner import compile_kubeflow, image_warning
    from histopath.pipeline.vertex_training import from_options

    config = config_from_args(args)
    vertex_training = from_options(args.train_on, args.vertex_project, args.vertex_region, args.trainer_machine,
                                   args.trainer_workers, args.trainer_accelerator, args.trainer_service_account)
    with Console(None, verbose=args.verbose) as console:
        path = compile_kubeflow(config, args.pipeline_output, image=args.image, resources=args.resources,
                                vertex_training=vertex_training)
        console.write(f"wrote {path}")
    warning = image_warning(args.image)
    if warning:
        print(f"histopath compile: {warning}", file=sys.stderr)
    return 0


def _presets(args: argparse.Namespace) -> int:
    from histopath.pipeline import presets

    for preset in presets.PRESETS.values():
        default = [d for d, name in presets.DEFAULT_PRESETS.items() if name == preset.name]
        print(f"{preset.name}{' (default for ' + ', '.join(default) + ')' if default else ''}")
        print(f"    trains:  {preset.trains}")
        for key, hint in preset.needs.items():
            print(f"    needs:   {key}: {hint}")
        if preset.takes:
            print(f"    takes:   {preset.takes}")
        if preset.results:
            print(f"    results: {preset.results}")
    return 0


def _kfp_target(args: argparse.Namespace):
    from histopath.pipeline.submit import KfpTarget

    if args.kube_context and (args.token or args.kfp_host):
        raise ConfigError("--kube-context uses the kubeconfig's credentials: it takes no --token")
    return KfpTarget(host=args.kfp_host, token=args.token, cookie=args.cookie, namespace=args.namespace,
                     kube_context=args.kube_context)


def _submit_request(args: argparse.Namespace, spec, name: str, common: dict) -> dict:
    """What `_submit` would send (printed by --dry-run)."""
    from histopath.pipeline import submit

    if not args.vertex:
        if args.command == "schedule":
            return submit.kfp_recurring_run_request(
                spec, _kfp_target(args), name=name, cron=args.cron, max_concurrency=args.max_concurrency,
                no_catchup=args.no_catchup, experiment=args.experiment, **common)
        return submit.kfp_run_request(spec, _kfp_target(args), run_name=name, experiment=args.experiment, **common)
    if args.command == "schedule":
        return submit.vertex_schedule_request(
            spec, args.vertex, name=name, cron=args.cron, max_concurrency=args.max_concurrency,
            service_account=args.service_account, **common)
    return submit.vertex_job_request(spec, args.vertex, display_name=name, service_account=args.service_account,
                                     **common)


def _submit(args: argparse.Namespace) -> int:
    import json

    from histopath.pipeline import cron, run_parameters, submit

    spec = submit.load_spec(args.spec)
    name = args.name or spec.name
    common = {"pipeline_root": args.pipeline_root,
              "parameters": run_parameters.values(spec.pipeline_spec, run_parameters.parse(args.param))}
    try:
        request = _submit_request(args, spec, name, common)
    except cron.CronError as error:
        raise ConfigError(f"--cron {args.cron!r}: {error}") from None
    if args.dry_run:
        print(json.dumps(request, indent=2, sort_keys=True))
        print("dry run: nothing was sent", file=sys.stderr)
        return 0
    if not args.vertex and args.command == "schedule":
        result = submit.kfp_schedule(_kfp_target(args), spec, name=name, cron=args.cron,
                                     max_concurrency=args.max_concurrency, no_catchup=args.no_catchup,
                                     experiment=args.experiment, **common)
    elif not args.vertex:
        result = submit.kfp_submit(_kfp_target(args), spec, run_name=name, experiment=args.experiment, **common)
    elif args.command == "schedule":
        result = submit.vertex_schedule(spec, args.vertex, name=name, cron=args.cron,
                                        max_concurrency=args.max_concurrency, service_account=args.service_account,
                                        key_file=args.key_file, **common)
    else:
        result = submit.vertex_submit(spec, args.vertex, display_name=name, service_account=args.service_account,
                                      key_file=args.key_file, **common)
    print(json.dumps(result, sort_keys=True))
    return 0


def _add_submit_arguments(parser: argparse.ArgumentParser, *, schedule: bool) -> None:
    parser.add_argument("--spec", required=True, metavar="PIPELINE.yaml", help="the spec `histopath compile` wrote")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--kfp-host", metavar="URL", help="Kubeflow Pipelines API, e.g. http://ml-pipeline-ui:80")
    target.add_argument("--kube-context", metavar="CONTEXT",
                        help="Kubeflow Pipelines through the Kubernetes API server of this kubeconfig context, "
                        "with its credentials ($KUBECONFIG selects the file)")
    target.add_argument("--vertex", metavar="PROJECT/REGION", help="Vertex AI Pipelines project and region")
    kfp = parser.add_argument_group("Kubeflow Pipelines credentials (docs/kubeflow.md)")
    kfp.add_argument("--token", metavar="TOKEN",
                     help="bearer token sent with every request (default: the file $KF_PIPELINES_SA_TOKEN_PATH, "
                     "or the in-cluster /var/run/secrets/kubeflow/pipelines/token when it exists)")
    kfp.add_argument("--cookie", metavar="NAME=VALUE",
                     help="cookie sent with every request, e.g. the authservice_session or oauth2_proxy_kubeflow "
                     "cookie of a Dex login in front of a multi-user Kubeflow")
    kfp.add_argument("--namespace", metavar="NS", help="your profile namespace on a multi-user Kubeflow")
    parser.add_argument("--key-file", metavar="KEY.json",
                        help="Vertex: a service-account (or external-account) key instead of Application Default "
                        "Credentials")
    parser.add_argument("--experiment", help="KFP experiment (default: Default)")
    parser.add_argument("--service-account", metavar="SA", help="Vertex: the service account the run uses")
    parser.add_argument("--pipeline-root", metavar="URI", help="override the spec's pipeline root")
    parser.add_argument("--name", help="run or schedule name (default: the pipeline's name)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a run-time setting of this run or schedule, repeatable (no recompiling): "
                        "data_root=URI, serving_dir=URI, span_window=all|N, min_new_patients=K")
    if schedule:
        parser.add_argument("--cron", required=True, help='5-field cron, e.g. "0 2 * * 1" (Mondays 02:00); UTC on KFP, Vertex also '
                            'takes a "TZ=Europe/Amsterdam " prefix')
        parser.add_argument("--max-concurrency", type=int, default=1, choices=range(1, 11), metavar="1-10",
                            help="runs of this schedule at once (default 1)")
        parser.add_argument("--no-catchup", action="store_true",
                            help="KFP: after a pause, do not start the runs that were missed")
    parser.add_argument("--dry-run", action="store_true", help="print the request; send nothing")
    parser.set_defaults(handler=_submit)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `run`, `compile`, `presets`, `submit` and `schedule`."""
    run = subparsers.add_parser(
        "run", help="run the whole TFX pipeline here (ingest, validate, transform, train, evaluate, push)",
        description="Runs IngestImages → StatisticsGen → SchemaGen → ExampleValidator → Transform → Trainers "
        "(DenseNet201, attention MIL) → Evaluators → winner selection → Pusher with LocalDagRunner and an "
        "SQLite ML-Metadata store under OUTPUT. Settings: the preset, then --config, then flags. Prints one "
        "line per component; the components' output is in OUTPUT/logs/. Exit code 3: no model passed its "
        "thresholds, nothing was pushed.",
    )
    add_config_arguments(run, need_data=True)
    run.add_argument("--output", dest="output_dir", required=True, metavar="DIR",
                     help="run folder: pipeline root, span store, metadata, serving/, report/, logs/")
    run.add_argument("--verbose", action="store_true", help="show every log line instead of one per component")
    run.set_defaults(handler=_run)

    compile_parser = subparsers.add_parser(
        "compile", help="compile the pipeline for Kubeflow Pipelines / Vertex AI (PipelineSpec YAML)",
        description="Compiles the same pipeline for Kubeflow Pipelines and Vertex AI Pipelines. Every path "
        "(--data, --pipeline-root, --serving-dir) must be one the cluster's pods reach (gs://... or a "
        "mounted volume).",
    )
    add_config_arguments(compile_parser, need_data=False)
    compile_parser.add_argument("--output", dest="pipeline_output", required=True, metavar="FILE",
                                help="pipeline.yaml to write")
    compile_parser.add_argument("--pipeline-root", dest="output_dir", required=True, metavar="URI",
                                help="run folder on the cluster, e.g. gs://bucket/histopath")
    compile_parser.add_argument("--image", default=None, metavar="REGISTRY/histopath/pipeline:TAG",
                                help="container image of every task, pushed where the cluster pulls from: built "
                                "from pipeline/docker/pipeline.Dockerfile by scripts/build-pipeline-image.sh "
                                "(default histopath/pipeline:latest, local only: a warning says so)")
    compile_parser.add_argument("--resources", action="append", default=[], metavar="TASK=cpu=N,memory=GB[,gpu=TYPE:K]",
                                help="CPU, memory (GB) and GPU of the tasks matching TASK (a pattern such as "
                                "'trainer_*'), over the preset's; repeatable. GPU type: NVIDIA_TESLA_T4 etc. on "
                                "Vertex, nvidia.com/gpu on Kubeflow")
    training = compile_parser.add_argument_group("training on Vertex AI (docs/kubeflow.md, Training across workers)")
    training.add_argument("--train-on", choices=("pod", "vertex"), default="pod",
                          help="pod: the Trainers train in their pipeline task (default); vertex: each launches a "
                          "Vertex AI custom job of --image and waits for it")
    training.add_argument("--vertex-project", metavar="PROJECT", help="the custom jobs' project")
    training.add_argument("--vertex-region", metavar="REGION", help="the custom jobs' region, e.g. europe-west4")
    training.add_argument("--trainer-machine", metavar="TYPE", help="machine type of every replica (default n1-standard-8)")
    training.add_argument("--trainer-workers", type=int, metavar="N",
                          help="replicas in all (default 1); N > 1 trains with MultiWorkerMirroredStrategy")
    training.add_argument("--trainer-accelerator", metavar="TYPE[:COUNT]",
                          help="accelerators per replica, e.g. NVIDIA_TESLA_T4:1 (with the GPU image)")
    training.add_argument("--trainer-service-account", metavar="SA", help="the custom jobs' service account")
    compile_parser.add_argument("--verbose", action="store_true", help="show the compiler's log lines")
    compile_parser.set_defaults(handler=_compile)

    presets_parser = subparsers.add_parser("presets", help="list the named training recipes")
    presets_parser.set_defaults(handler=_presets)

    _add_submit_arguments(subparsers.add_parser(
        "submit", help="start one run of a compiled pipeline on Kubeflow Pipelines or Vertex AI",
        description="Submits the spec written by `histopath compile`: to Kubeflow Pipelines with kfp.Client "
        "(--token, a service-account token file, --cookie, or a kubeconfig context) or to Vertex AI with "
        "google-cloud-aiplatform (Application Default Credentials or --key-file)."), schedule=False)
    _add_submit_arguments(subparsers.add_parser(
        "schedule", help="run a compiled pipeline on a cron schedule (Kubeflow recurring run / Vertex schedule)",
        description="Creates a recurring run: each run ingests the spans that arrived since the last and "
        "retrains when they bring new patients."), schedule=True)

