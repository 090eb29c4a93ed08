"""Bad values for every validated config field, and each command's help: a config field with
a bad value is refused by `validate` with one line that starts with the field's dotted name;
`mmar <command> --help` says what the command does, reads and writes, and exits 0."""
import copy
import io
import contextlib

import ml_collections
import pytest

from mmar import cli, commands, config as config_lib, schema
from mmar.config_fields import SCHEMA, Field
from mmar.errors import UserError

pytestmark = pytest.mark.faults

CANDIDATES = (-7, 0, 1.5, -0.5, 2.0, "no-such-value", None, True, (3, 1), [0], 10 ** 9)


def _fields(spec, prefix=""):
    for name, sub in spec.items():
        if isinstance(sub, dict):
            yield from _fields(sub, f"{prefix}{name}.")
        elif isinstance(sub, Field) and sub.check is not None:
            yield f"{prefix}{name}", sub


def _bad_value(field: Field):
    for value in CANDIDATES:
        try:
            if not field.check(value):
                return value
        except TypeError:
            return value
    raise AssertionError(f"no candidate is a bad value for a field wanting {field.want}")


CHECKED = dict(_fields(SCHEMA))


def test_every_checked_field_is_covered():
    assert len(CHECKED) > 100    # the schema has ~150 fields; most carry a rule


@pytest.mark.parametrize("dotted", sorted(CHECKED))
def test_a_bad_value_is_one_line_naming_the_field(test_config, dotted):
    tree = copy.deepcopy(test_config.to_dict())
    *sections, leaf = dotted.split(".")
    node = tree
    for s in sections:
        node = node[s]
    node[leaf] = bad = _bad_value(CHECKED[dotted])
    with pytest.raises(UserError) as e:
        config_lib.validate(ml_collections.ConfigDict(tree))
    message = str(e.value)
    assert isinstance(e.value, schema.ConfigError)
    assert message.startswith(f"{dotted}={bad!r}:") and "\n" not in message


CONFIG_COMMANDS = [name for name in commands.COMMANDS
                   if name not in commands.PATH_COMMANDS + ("launch",)]


@pytest.mark.parametrize("command", CONFIG_COMMANDS)
def test_each_command_has_its_own_help(command):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cli.main(["mmar", command, "--help"])
    text = out.getvalue()
    assert status == 0                                  # before: absl usage, exit status 1
    assert text.startswith(f"usage: mmar {command} ")
    for part in ("reads:", "writes:", "config sections:", "--workdir", "--verbose"):
        assert part in text
    for section in commands.COMMANDS[command].sections:
        assert section in SCHEMA or section in schema.OPTIONAL_SECTIONS   # real sections
