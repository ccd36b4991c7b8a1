"""Runs a compiled PipelineSpec (`histopath compile`) on this machine, one container per
task, each handed the executor input the Kubeflow Pipelines v2 driver would hand it.

    python -m histopath.pipeline.spec_runner pipeline.yaml --pipeline-root /abs/root \\
        [--mount /abs/data] [--runner docker|subprocess]

For every task in dependency order it builds the `ExecutorInput` as open-source KFP's
driver does (parameters from `runtimeValue.constant`, pipeline parameters from the run's
values or the spec's defaults; input artifacts as their producers
left them, with their types; output artifacts at `{root}/{pipeline}/{run}/{task}/{key}`),
runs the task's container command with that input (docker: the image's entrypoint
replaced by the task's command, as Kubernetes does; the pipeline root and `--mount`
folders mounted at the same paths), and merges the task's executor output into its
artifacts. A task whose trigger condition (the retrain gate) is false is skipped, and so
is a task that needs an artifact of a skipped task. What cannot run outside a cluster:
KFP's cache and ML Metadata lineage (every task runs); resolver executors (Vertex only;
`histopath compile` emits none).

Why not `kfp.local` (kfp 2.8): its DockerRunner rebuilds every output artifact as a plain
`system.Artifact`, so the next TFX task cannot load its input type ("Could not import
system.Artifact"); it also rejects trigger conditions, keeps the image's entrypoint and
mounts nothing but its pipeline root.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import subprocess
import sys
import time
from typing import Any, Optional, Sequence

from google.protobuf import json_format, struct_pb2
from kfp.pipeline_spec import pipeline_spec_pb2 as pb

from histopath import fileio
from histopath.console import elapsed, progress_logger
from histopath.errors import ConfigError, HistopathError

# The condition TFX compiles a `tfx.dsl.Cond` on an artifact's custom property to.
_CONDITION = re.compile(r"\(?\s*inputs\.artifacts\['([^']+)'\]\.artifacts\[0\]\.metadata\['([^']+)'\]\s*"
                        r"(==|!=)\s*(-?[0-9.]+|'[^']*'|\"[^\"]*\")\s*\)?")


class TaskFailed(HistopathError):
    """A task's container exited with an error."""


@dataclasses.dataclass
class TaskResult:
    """What became of one task."""

    name: str
    status: str  # "complete" | "skipped"
    seconds: float = 0.0
    reason: str = ""
    artifacts: dict = dataclasses.field(default_factory=dict)


def upstream_tasks(task: pb.PipelineTaskSpec) -> set[str]:
    """The tasks `task` waits for: its dependentTasks and every producer of its inputs."""
    found = set(task.dependent_tasks)
    found.update(a.task_output_artifact.producer_task for a in task.inputs.artifacts.values()
                 if a.HasField("task_output_artifact"))
    found.update(p.task_output_parameter.producer_task for p in task.inputs.parameters.values()
                 if p.HasField("task_output_parameter"))
    return found


def topological_order(tasks: dict[str, pb.PipelineTaskSpec]) -> list[str]:
    """Task names, each after every task it waits for (ties by name)."""
    order, done, pending = [], set(), dict(sorted(tasks.items()))
    while pending:
        ready = [name for name, task in pending.items() if upstream_tasks(task) <= done]
        if not ready:
            raise ConfigError(f"the spec's tasks wait for each other in a cycle: {sorted(pending)}")
        for name in ready:
            order.append(name)
            done.add(name)
            del pending[name]
    return order


def evaluate_condition(condition: str, inputs: pb.ExecutorInput.Inputs) -> bool:
    """Evaluates a trigger condition of the form TFX compiles `Cond(...)` to (terms joined by
    `&&`). Numbers compare as floats: KFP carries integer properties as JSON numbers.

    Raises:
      ConfigError: another form of condition.
    """
    result = True
    for term in condition.split("&&"):
        match = _CONDITION.fullmatch(term.strip())
        if not match:
            raise ConfigError(f"unsupported trigger condition {term.strip()!r}")
        key, field, operator, literal = match.groups()
        metadata = json_format.MessageToDict(inputs.artifacts[key].artifacts[0].metadata)
        value = metadata.get(field)
        expected: Any = literal.strip("'\"") if literal[0] in "'\"" else float(literal)
        if isinstance(expected, float) and value is not None:
            value = float(value)
        result = result and ((value == expected) if operator == "==" else (value != expected))
    return result


def _value(value: Any) -> struct_pb2.Value:
    return json_format.ParseDict(value, struct_pb2.Value())


class SpecRun:
    """One run of a spec.

    Args:
      spec: the PipelineSpec.
      pipeline_root: an absolute local folder (mounted at the same path in containers).
      runner: "docker" (each task in its image) or "subprocess" (this Python: a quick check).
      mounts: further absolute folders the tasks read or write (data root, serving folder).
      env: environment variables of every task.
      parameters: pipeline parameter values of this run (the others keep their defaults).
    """

    def __init__(self, spec: pb.PipelineSpec, pipeline_root: str, runner: str = "docker",
                 mounts: Sequence[str] = (), env: Optional[dict[str, str]] = None,
                 parameters: Optional[dict[str, Any]] = None):
        if not os.path.isabs(pipeline_root):
            raise ConfigError(f"--pipeline-root must be an absolute local folder, got {pipeline_root!r}")
        self.spec = spec
        self.executors = dict(json_format.ParseDict(json_format.MessageToDict(spec.deployment_spec),
                                                    pb.PipelineDeploymentConfig()).executors)
        self.root = pipeline_root
        self.runner = runner
        self.mounts = [os.path.abspath(m) for m in mounts]
        self.env = dict(env or {})
        self.parameters = dict(parameters or {})
        self.run_id = "local-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.name = spec.pipeline_info.name
        self.outputs: dict[str, dict[str, pb.RuntimeArtifact]] = {}
        self.results: dict[str, TaskResult] = {}

    def pipeline_parameter(self, name: str) -> struct_pb2.Value:
        """A pipeline parameter's value for this run: given, or the spec's default."""
        if name in self.parameters:
            return _value(self.parameters[name])
        definition = self.spec.root.input_definitions.parameters.get(name)
        if definition is None or not definition.HasField("default_value"):
            raise ConfigError(f"pipeline parameter {name!r} has no value and no default")
        return definition.default_value

    # ---- the executor input, as the KFP driver builds it -----------------------------------
    def executor_input(self, task_name: str, task: pb.PipelineTaskSpec, component: pb.ComponentSpec) -> pb.ExecutorInput:
        task_root = f"{self.root}/{self.name}/{self.run_id}/{task_name}"
        executor_input = pb.ExecutorInput()
        for key, parameter in task.inputs.parameters.items():
            if parameter.component_input_parameter:  # a pipeline parameter: the run's value or its default
                executor_input.inputs.parameter_values[key].CopyFrom(
                    self.pipeline_parameter(parameter.component_input_parameter))
                continue
            kind = parameter.runtime_value.WhichOneof("value") if parameter.HasField("runtime_value") else None
            if kind != "constant":
                raise ConfigError(f"{task_name}.{key}: only runtimeValue.constant and pipeline parameters are "
                                  "supported (PipelineSpec 2.1, as `histopath compile` writes)")
            executor_input.inputs.parameter_values[key].CopyFrom(parameter.runtime_value.constant)
        for key, definition in component.input_definitions.parameters.items():
            if key not in executor_input.inputs.parameter_values and definition.HasField("default_value"):
                executor_input.inputs.parameter_values[key].CopyFrom(definition.default_value)
        for key, artifact in task.inputs.artifacts.items():
            source = artifact.task_output_artifact
            executor_input.inputs.artifacts[key].artifacts.append(
                self.outputs[source.producer_task][source.output_artifact_key])
        for key, definition in component.output_definitions.artifacts.items():
            executor_input.outputs.artifacts[key].artifacts.add(
                name=f"{self.run_id}/{task_name}/{key}", uri=f"{task_root}/{key}",
                type=definition.artifact_type, metadata=definition.metadata)
        executor_input.outputs.output_file = f"{task_root}/executor_output.json"
        return executor_input

    @staticmethod
    def _substitute(arguments: Sequence[str], executor_input: pb.ExecutorInput) -> list[str]:
        text = json_format.MessageToJson(executor_input, indent=None)
        substituted = [argument.replace("{{$}}", text) for argument in arguments]
        left = [a for a in substituted if "{{$" in a]
        if left:
            raise ConfigError(f"unsupported placeholder in {left[0][:120]!r}")
        return substituted

    # ---- running -------------------------------------------------------------------------
    def _run_process(self, image: str, command: list[str], arguments: list[str], log_path: str) -> int:
        with open(log_path, "w", encoding="utf-8") as log:
            if self.runner == "subprocess":
                program = [sys.executable if part in ("python", "python3") else part for part in command]
                return subprocess.call(program + arguments, env={**os.environ, **self.env},
                                       stdout=log, stderr=subprocess.STDOUT)
            import docker

            client = docker.from_env()
            volumes = {self.root: {"bind": self.root, "mode": "rw"}}
            volumes.update({m: {"bind": m, "mode": "rw"} for m in self.mounts})
            container = client.containers.run(image=image, entrypoint=command, command=arguments,
                                              volumes=volumes, environment=self.env, network_mode="host",
                                              detach=True)
            try:
                for chunk in container.logs(stream=True):
                    log.write(chunk.decode("utf-8", errors="replace"))
                return int(container.wait()["StatusCode"])
            finally:
                container.remove(force=True)
                client.close()

    def _skip_reason(self, task: pb.PipelineTaskSpec) -> Optional[str]:
        for artifact in task.inputs.artifacts.values():
            producer = artifact.task_output_artifact.producer_task
            if self.results.get(producer) and self.results[producer].status == "skipped":
                return f"needs an artifact of {producer}, which was skipped"
        return None

    def run_task(self, name: str) -> TaskResult:
        task = self.spec.root.dag.tasks[name]
        component = self.spec.components[task.component_ref.name]
        skipped = self._skip_reason(task)
        if skipped:
            return TaskResult(name, "skipped", reason=skipped)
        executor = self.executors[component.executor_label]
        if executor.WhichOneof("spec") != "container":
            raise ConfigError(f"{name}: a {executor.WhichOneof('spec')} executor runs on Vertex AI only")
        executor_input = self.executor_input(name, task, component)
        condition = task.trigger_policy.condition
        if condition and not evaluate_condition(condition, executor_input.inputs):
            return TaskResult(name, "skipped", reason=f"its condition is false: {condition}")
        task_dir = os.path.dirname(executor_input.outputs.output_file)
        os.makedirs(task_dir, exist_ok=True)
        fileio.write_text(os.path.join(task_dir, "executor_input.json"), json_format.MessageToJson(executor_input))
        container = executor.container
        started = time.monotonic()
        code = self._run_process(container.image, list(container.command),
                                 self._substitute(list(container.args), executor_input), os.path.join(task_dir, "log.txt"))
        if code:
            raise TaskFailed(f"task {name} exited with {code} (log: {os.path.join(task_dir, 'log.txt')})")
        output = pb.ExecutorOutput()
        if os.path.exists(executor_input.outputs.output_file):
            json_format.Parse(fileio.read_text(executor_input.outputs.output_file), output, ignore_unknown_fields=True)
        produced = {}
        for key, artifacts in executor_input.outputs.artifacts.items():
            artifact = pb.RuntimeArtifact()
            artifact.CopyFrom(artifacts.artifacts[0])
            if output.artifacts.get(key) and output.artifacts[key].artifacts:  # the launcher's merge
                written = output.artifacts[key].artifacts[0]
                if written.uri:
                    artifact.uri = written.uri
                artifact.metadata.update(json_format.MessageToDict(written.metadata))
            produced[key] = artifact
        self.outputs[name] = produced
        return TaskResult(name, "complete", time.monotonic() - started,
                          artifacts={k: {"uri": a.uri, "metadata": json_format.MessageToDict(a.metadata)}
                                     for k, a in produced.items()})

    def run(self) -> dict[str, Any]:
        """Runs every task; returns the summary (also written to `<run folder>/run_summary.json`).

        Raises:
          TaskFailed: a task failed (the tasks after it do not run).
        """
        started = time.monotonic()
        for name in topological_order(dict(self.spec.root.dag.tasks)):
            result = self.results[name] = self.run_task(name)
            line = f"  ✓ {name:32s} {elapsed(result.seconds)}" if result.status == "complete" else \
                f"  · {name:32s} skipped: {result.reason}"
            progress_logger().info(line)
        summary = {"pipeline": self.name, "run_id": self.run_id, "runner": self.runner,
                   "seconds": round(time.monotonic() - started, 1),
                   "tasks": {name: dataclasses.asdict(result) for name, result in self.results.items()},
                   "not_run_here": ["KFP's cache (every task ran)", "ML Metadata lineage"]}
        fileio.write_json(f"{self.root}/{self.name}/{self.run_id}/run_summary.json", summary)
        return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m histopath.pipeline.spec_runner`."""
    from histopath.console import Console
    from histopath.pipeline.submit import load_spec

    parser = argparse.ArgumentParser(prog="python -m histopath.pipeline.spec_runner", description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", help="the PipelineSpec YAML of `histopath compile`")
    parser.add_argument("--pipeline-root", required=True, help="absolute local folder for the run's artifacts")
    parser.add_argument("--runner", choices=("docker", "subprocess"), default="docker")
    parser.add_argument("--mount", action="append", default=[], help="a folder the tasks use, mounted at its path")
    args = parser.parse_args(argv)
    spec = json_format.ParseDict(load_spec(args.spec).pipeline_spec, pb.PipelineSpec())
    try:
        with Console(None) as console:
            summary = SpecRun(spec, args.pipeline_root, args.runner, args.mount).run()
            console.write(json.dumps({k: summary[k] for k in ("run_id", "seconds")}))
    except HistopathError as error:
        print(f"spec_runner: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
