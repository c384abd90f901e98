"""`knightctl completion bash|zsh|fish`, and what option values complete to: devices, spec files, op names.

Completion runs the `knightctl` command on every TAB (click's `_KNIGHTCTL_COMPLETE`), so nothing
here imports torch: devices are counted from the environment and /proc, spec files are globbed, and
op names come from `plugins/opnames.py`, which loads the plugins only when they changed.
"""

from __future__ import annotations

import os
from pathlib import Path

import click
from click.shell_completion import (
    BashComplete,
    CompletionItem,
    add_completion_class,
    get_completion_class,
    split_arg_string,
)

PROG_NAME = "knightctl"
COMPLETE_VAR = "_KNIGHTCTL_COMPLETE"  # click's name for it: _{PROG_NAME}_COMPLETE, upper case
SHELLS = ("bash", "zsh", "fish")
SPEC_SUFFIXES = (".yaml", ".yml")


def _cuda_count() -> int:
    """How many CUDA devices this process could see, without torch (0 if unknown)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [part for part in visible.split(",") if part.strip()]
        return 0 if not ids or ids[0].strip() == "-1" else len(ids)
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 0


def complete_device(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """auto, cpu, cuda, cuda:N for each visible GPU (cuda:0 where none is seen), mps."""
    devices = ["auto", "cpu", "cuda", *(f"cuda:{n}" for n in range(max(_cuda_count(), 1))), "mps"]
    return _matching([(device, None) for device in devices], incomplete)


def complete_spec(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """The *.yaml and *.yml files that start with `incomplete`, and folders (the shell's own
    completion; bash offers them when no spec file matches)."""
    folder, _, start = incomplete.rpartition("/")
    where = Path(os.path.expanduser(folder or ".") if folder or not incomplete.startswith("/") else "/")
    try:
        names = sorted(entry.name for entry in where.iterdir() if entry.name.startswith(start))
    except OSError:
        names = []
    prefix = f"{folder}/" if folder or incomplete.startswith("/") else ""
    specs = [name for name in names if name.endswith(SPEC_SUFFIXES) and (where / name).is_file()]
    return [CompletionItem(incomplete, type="dir"), *(CompletionItem(prefix + name) for name in specs)]


def _plugin_settings(ctx: click.Context):  # type: ignore[no-untyped-def]
    """The plugin options of the command line being completed (its group's callback has not run)."""
    from knightctl.plugins.system import PluginSettings

    root = ctx.find_root().params
    return PluginSettings.from_env().override(
        dirs=root.get("plugins_dirs") or (),
        disable=root.get("disabled") or (),
        no_external=bool(root.get("no_external_plugins")),
    )


def _colons(word: str) -> bool:
    return bool(word) and set(word) == {":"}


class _BashComplete(BashComplete):
    """click's bash completion, with the words bash split at ':' (its COMP_WORDBREAKS) joined again:
    `--device cuda:0` and `gc::cu` arrive as `cuda`, `:`, `0` and `gc`, `::`, `cu`, which click would
    parse as three arguments. Each completion then drops what bash keeps of the word (`gc::`), as bash
    replaces only its last piece. The script it prints is click's own."""

    kept = ""

    def get_completion_args(self) -> tuple[list[str], str]:
        words = split_arg_string(os.environ["COMP_WORDS"])
        cword = int(os.environ["COMP_CWORD"])
        words = [*words[: cword + 1], *([""] * (cword + 1 - len(words)))]  # the word under the cursor may be ""
        joined: list[str] = []
        for word in words:
            if joined and len(joined) > 1 and (_colons(word) or joined[-1].endswith(":")):
                joined[-1] += word
            else:
                joined.append(word)
        self.kept = joined[-1].removesuffix(words[-1])
        return joined[1:-1], joined[-1]

    def format_completion(self, item: CompletionItem) -> str:
        if item.type == "plain" and self.kept and item.value.startswith(self.kept):
            item = CompletionItem(item.value.removeprefix(self.kept), type=item.type, help=item.help)
        return super().format_completion(item)


add_completion_class(_BashComplete, "bash")  # before click reads the environment: every `knightctl` imports this


def _matching(values: list[tuple[str, str | None]], incomplete: str) -> list[CompletionItem]:
    return [CompletionItem(value, help=about) for value, about in values if value.startswith(incomplete)]


def complete_op(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """The registered op names that start with what was typed, each with the plugin it came from."""
    from knightctl.plugins.opnames import op_names

    return _matching([(name, f"from {plugin}") for name, plugin in op_names(_plugin_settings(ctx))], incomplete)


def completion_script(command: click.Command, shell: str) -> str:
    """The script `_KNIGHTCTL_COMPLETE={shell}_source knightctl` prints, for `command`."""
    completer = get_completion_class(shell)
    if completer is None:  # the click.Choice below lets only SHELLS through
        raise click.BadParameter(f"no completion for {shell!r}")
    return completer(command, {}, PROG_NAME, COMPLETE_VAR).source()


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the shell completion script for SHELL (bash, zsh or fish); see the README's "Shell
    completion" for where it goes. Commands, options and their values complete: op names, devices,
    spec files."""
    click.echo(completion_script(ctx.find_root().command, shell), nl=False)
