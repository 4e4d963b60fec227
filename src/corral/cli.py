"""The `corral` command. Thin: options come from the settings model, work from the manager."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from pydantic import BaseModel

from corral.control.commands import COMMANDS
from corral.errors import UsageError
from corral.exit_codes import FAILURE, USAGE
from corral.settings import (
    ManagerConfig,
    System,
    WebConfig,
    env_name,
    flagged_settings,
    resolve,
)
from corral.version import __version__


class GroupedOption(click.Option):
    """An option that `--help` lists under its setting's group."""

    def __init__(self, *args: Any, help_group: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help_group = help_group


class DescribedArgument(click.Argument):
    """A positional argument that `--help` lists, with a description, under "Arguments"."""

    help_group = "Arguments"

    def __init__(self, *args: Any, help: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = help

    def get_help_record(self, ctx: click.Context) -> tuple[str, str]:
        return self.make_metavar(ctx), self.help


class GroupedCommand(click.Command):
    """A command whose `--help` shows its options in sections (Binding, Workers, ...)."""

    def format_arguments(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Arguments are listed by format_options, in their own section, on every click."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                group = getattr(param, "help_group", "Other options")
                sections.setdefault(group, []).append(record)
        for group, rows in sections.items():
            with formatter.section(group):
                formatter.write_dl(rows)


def setting_options(model: type[BaseModel]) -> list[click.Option]:
    """One click option per flagged setting of `model`, with its default and variable in help."""
    options: list[click.Option] = []
    for name, info, spelling in flagged_settings(model):
        default = info.get_default(call_default_factory=True)
        shown = "" if default in (None, "", []) else f"default: {_show(default)}; "
        help_text = f"{info.description} [{shown}env: {env_name(name)}]"
        kwargs: dict[str, Any] = {"help": help_text, "help_group": spelling.group}
        if info.annotation is bool:
            kwargs.update(is_flag=True, default=None)
        else:
            kwargs.update(type=str, metavar=spelling.metavar or _metavar(info.annotation))
            kwargs["multiple"] = getattr(info.annotation, "__origin__", None) is list
        options.append(GroupedOption([*spelling.decls, name], **kwargs))
    return options


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _metavar(annotation: Any) -> str:
    return "N" if annotation in (int, int | None) else "TEXT"


SETTINGS = (WebConfig, ManagerConfig)


def given_settings(ctx: click.Context) -> dict[str, Any]:
    """The settings the user typed on the command line (not click's defaults)."""
    return {
        name: ctx.params[name]
        for model in SETTINGS
        for name, _, _ in flagged_settings(model)
        if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
    }


def spelling_of_settings() -> Callable[[str], str]:
    """How the command line spells each setting: log_format -> --log-format."""
    decls = {
        name: spelling.decls[0].split("/")[0]
        for model in SETTINGS
        for name, _, spelling in flagged_settings(model)
    }
    return lambda name: decls.get(name, name.upper())


def config_option() -> GroupedOption:
    """`-c/--config PATH`, the same for every command that reads the configuration."""
    return GroupedOption(
        ["-c", "--config", "config_path"],
        type=click.Path(path_type=Path, dir_okay=False),
        help="The configuration file [default: corral.toml here, "
        "else [tool.corral] in pyproject.toml]",
        help_group="Configuration",
    )


def fail(messages: list[str]) -> None:
    for message in messages:
        click.echo(f"corral: error: {message}", err=True)
    sys.exit(USAGE)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="corral")
def main() -> None:
    """corral runs a Python web application: ASGI workers, supervised."""


@main.command(
    cls=GroupedCommand,
    params=[
        DescribedArgument(
            ["app"], required=False, help="The ASGI app, as MODULE:ATTRIBUTE (main:app)."
        ),
        config_option(),
        *setting_options(WebConfig),
        *setting_options(ManagerConfig),
    ],
)
@click.pass_context
def run(ctx: click.Context, app: str | None, config_path: Path | None, **_: Any) -> None:
    """Serve APP (MODULE:ATTRIBUTE, e.g. main:app) with supervised workers, and run
    everything corral.toml declares.

    The current directory is on the import path, as with uvicorn. Every
    option can also be set with the environment variable shown beside it,
    which takes precedence over the flag; flags take precedence over the file.
    """
    flags, directory = given_settings(ctx), Path.cwd()

    def load() -> System:
        """The configuration as it is now: at start, and again on each SIGHUP."""
        return resolve(app, flags, config_path, directory, spelling_of_settings())

    try:
        system = load()
    except UsageError as error:
        fail(error.messages)
        return
    from corral.manager.supervisor import Manager

    sys.exit(Manager(system, load).run())


for command in COMMANDS:
    main.add_command(command)


def resolve_or_exit(config_path: Path | None, code: int = FAILURE) -> System:
    """The system corral.toml declares (no flags), or its problems on stderr and exit `code`."""
    try:
        return resolve(None, {}, config_path, Path.cwd(), spelling_of_settings())
    except UsageError as error:
        for message in error.messages:
            click.echo(f"corral: error: {message}", err=True)
        sys.exit(code)


@main.command(
    cls=GroupedCommand,
    params=[
        DescribedArgument(
            ["app"], required=False, help="The ASGI app, as MODULE:ATTRIBUTE (main:app)."
        ),
        config_option(),
    ],
)
def check(app: str | None, config_path: Path | None) -> None:
    """Validate the configuration and import every app and `call` target; start nothing.

    Exits 0 when all is well, 1 with one message per problem otherwise.
    """
    from corral.checks import problems_with

    try:
        system = resolve(app, {}, config_path, Path.cwd(), spelling_of_settings())
    except UsageError as error:
        for message in error.messages:
            click.echo(f"corral: error: {message}", err=True)
        sys.exit(FAILURE)
    problems = problems_with(system)
    for problem in problems:
        click.echo(f"corral: error: {problem}", err=True)
    if problems:
        sys.exit(FAILURE)
    click.echo("corral: configuration valid; every target imports")


@main.command(params=[config_option()])
def prestart(config_path: Path | None) -> None:
    """Run the [prestart] steps once, in order, and exit: 0, or 4 at the first that fails.

    For an engine that runs them before the rest: a Kubernetes Job, a oneshot
    unit, a compose service the others wait for.
    """
    from corral.manager import once

    sys.exit(once.prestart(resolve_or_exit(config_path, USAGE)))


@main.command(params=[config_option()])
@click.argument("name")
def job(name: str, config_path: Path | None) -> None:
    """Run job NAME once, here, and exit: 0 when it succeeds, 1 when it fails or times out.

    For an engine that keeps the schedule: a CronJob, a systemd timer.
    (`corral jobs run NAME` asks the corral running here instead.)
    """
    from corral.manager import once

    system = resolve_or_exit(config_path, USAGE)
    if name not in system.jobs:
        fail([f"no job named {name!r} (jobs: {', '.join(system.jobs) or 'none declared'})"])
    sys.exit(once.job(system, name))


@main.command(name="export", params=[config_option()])
@click.argument("engine", type=click.Choice(["kubernetes", "systemd", "compose"]))
@click.option(
    "-o",
    "--output",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    help="Write the files into DIR, created if need be [default: print them].",
)
@click.option(
    "--image",
    metavar="IMAGE",
    help="kubernetes, compose: the image that holds the app, corral and corral.toml.",
)
@click.option(
    "--name",
    metavar="NAME",
    help="The application's name, which prefixes every object and unit "
    "[default: the configuration's folder].",
)
@click.option(
    "--workdir",
    metavar="DIR",
    help="The folder holding corral.toml where the engine runs corral [default: systemd: "
    "the configuration's folder; kubernetes, compose: the image's working directory].",
)
@click.option(
    "--executable",
    metavar="PATH",
    help="The corral that the engine runs [default: systemd: the one running this command; "
    "kubernetes, compose: corral, on the image's PATH].",
)
def export_command(
    engine: str,
    directory: Path | None,
    image: str | None,
    name: str | None,
    workdir: str | None,
    executable: str | None,
    config_path: Path | None,
) -> None:
    """Write what runs corral.toml's system on ENGINE: kubernetes, systemd or compose.

    From the file alone (never from a running corral), the same bytes for the
    same file. What the engine cannot express is refused, or kept inside
    corral; the notes on stderr say which, and where each part went.
    Exits 1 when the engine cannot run the system as the file says.
    """
    from corral.export import ExportError, Target, app_name, check_name, export
    from corral.settings.resolve import find

    found = find(config_path, Path.cwd())
    if found is None:
        fail(["export reads corral.toml (or [tool.corral] in pyproject.toml): none here; give -c"])
        return
    system = resolve_or_exit(found.path)
    try:
        target = Target(
            name=check_name(name or app_name(found.path)),
            config=found.path,
            image=image,
            workdir=workdir or (str(found.path.resolve().parent) if engine == "systemd" else None),
            executable=executable or (_this_corral() if engine == "systemd" else "corral"),
        )
        result = export(engine, system, target)
    except ExportError as error:
        for message in error.messages:
            click.echo(f"corral: error: {message}", err=True)
        sys.exit(FAILURE)
    for note in result.notes:
        click.echo(f"corral: {note}", err=True)
    if directory is None:
        separator = "\n" if engine == "systemd" else "---\n"
        click.echo(separator.join(f"# {n}\n{text}" for n, text in result.files.items()), nl=False)
        return
    directory.mkdir(parents=True, exist_ok=True)
    for file_name, text in result.files.items():
        (directory / file_name).write_text(text)
    click.echo(f"corral: wrote {', '.join(result.files)} in {directory}", err=True)


def _this_corral() -> str:
    """The corral executable beside this interpreter (a virtualenv's), else on PATH."""
    beside = Path(sys.executable).parent / "corral"
    return str(beside) if beside.exists() else shutil.which("corral") or "corral"
