"""
Command-line plumbing shared by every entry point.

Flags come from a dataclass: every field is a `--name=value` flag (a dash in a name works too:
`--batch-size=64` is `--batch_size=64`), typed by the field's type, and the field's trailing comment is
its help text, so there is one list of flags and it is the code. `--help` prints them with type and
default; an unknown flag is an error with a "did you mean". A dataclass with a `config` field also reads a
TOML file of the same names (`--config=configs/x.toml`); flags given beside it override the file.

User mistakes (a wrong flag, a missing file, a bad record under --bad_data=error ...) raise `UsageError`
and end as one line `error: <what and where>; <what to do>` with exit status 2. Anything else is a bug and
keeps its traceback.
"""

import difflib
import inspect
import re
import sys
from dataclasses import MISSING, fields


class UsageError(ValueError):
    """a predictable user mistake; entry points print it as one line, without a traceback"""


class MissingFileError(UsageError, FileNotFoundError):
    """a file or folder the user named does not exist"""


class Stopped(RuntimeError):
    """a run stopped on purpose (too many bad records, a non-finite loss): one line, exit status 3"""
    exit_code = 3  # a subclass may name its own (runtime.Preempted: 75)


def _field_comments(cls):
    """{field: trailing comment} and {field: section title} read from the dataclass's source"""
    comments, sections, section = {}, {}, ""
    for base in cls.__mro__[1:]:  # a subclass of another config inherits its fields' help
        if hasattr(base, "__dataclass_fields__"):
            c, s = _field_comments(base)
            comments.update(c)
            sections.update(s)
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return comments, sections
    last = None
    for line in lines[1:]:
        m = re.match(r"\s+(\w+)\s*:[^=#]*(=[^#]*)?(#\s*(.*))?$", line)
        if m and not line.strip().startswith("#"):
            last = m.group(1)
            comments[last] = (m.group(4) or "").strip()
            sections[last] = section
            continue
        c = re.match(r"\s+#\s*(.*)$", line)
        if c:
            if last and comments.get(last) and line.index("#") > 20:  # a continued field comment
                comments[last] += " " + c.group(1).strip()
            else:
                section, last = c.group(1).strip(), None
    return comments, sections


def _type_of(f):
    return f.type if isinstance(f.type, type) else {"int": int, "float": float, "str": str, "bool": bool}[f.type]


def help_text(cls, prog, doc=""):
    comments, sections = _field_comments(cls)
    out = [f"usage: python {prog} [--name=value ...]"]
    if doc:
        out += ["", doc.strip()]
    current = None
    for f in fields(cls):
        if sections.get(f.name, "") != current:
            current = sections.get(f.name, "")
            out += ["", f"{current}:" if current else "options:"]
        kind = _type_of(f).__name__
        default = f.default if f.default is not MISSING else "(required)"
        left = f"  --{f.name}={kind.upper()}"
        out.append(f"{left:<30} {default!r:<14} {comments.get(f.name, '')}".rstrip())
    out += ["", "booleans also take the bare form (--resume) or =true/false; -h, --help prints this"]
    return "\n".join(out)


def parse_value(text, kind, name):
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"--{name}: expected a boolean (true/false), got {text!r}")
    try:
        return kind(text)
    except ValueError:
        raise UsageError(f"--{name}: expected {kind.__name__}, got {text!r}") from None


def suggest(name, names):
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    return f"; did you mean --{close[0]}?" if close else ""


def parse_args(argv, cls, prog=None, doc=""):
    """--name=value (or --flag for booleans) -> an instance of the dataclass cls; -h/--help prints the flags"""
    prog = prog or sys.argv[0].split("/")[-1]
    types = {f.name: _type_of(f) for f in fields(cls)}
    values = {}
    for arg in argv:
        if arg in ("-h", "--help"):
            print(help_text(cls, prog, doc))
            sys.exit(0)
        if not arg.startswith("--"):
            raise UsageError(f"unexpected argument {arg!r}: flags are --name=value; see python {prog} --help")
        key, eq, text = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key not in types:
            raise UsageError(f"unknown option --{key}{suggest(key, list(types))} (python {prog} --help lists all)")
        if not eq:
            if types[key] is not bool:
                raise UsageError(f"--{key} needs a value: --{key}=...")
            text = "true"
        values[key] = parse_value(text, types[key], key)
    if values.get("config"):  # a recipe file gives the defaults; flags on the command line override it
        values = {**read_config_file(values["config"], cls), **values}
    return cls(**values)


def read_config_file(path, cls):
    """a TOML recipe (top-level `name = value` lines, names of cls's fields) -> {name: value}"""
    import tomllib  # the standard library's TOML reader (Python 3.11+)
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise MissingFileError(f"--config={path}: no such file (the shipped recipes are in configs/)") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not valid TOML ({e})") from None
    types = {f.name: _type_of(f) for f in fields(cls) if f.name != "config"}
    values = {}
    for key, value in raw.items():
        if key not in types:
            raise UsageError(f"{path}: unknown key {key!r}{suggest(key, list(types))}".replace("--", "")
                             + "; keys are train.py's flags without the dashes")
        kind = types[key]
        if kind is float and type(value) is int:
            value = float(value)
        if type(value) is not kind:
            raise UsageError(f"{path}: {key} = {value!r}: expected {kind.__name__}")
        values[key] = value
    return values


def check_choice(name, value, allowed):
    """a flag restricted to a few values"""
    if value not in allowed:
        raise UsageError(f"--{name}={value}: expected one of {', '.join(allowed)}{suggest(str(value), list(allowed))}"
                         .replace("did you mean --", "did you mean "))


def run(main, cls, doc="", argv=None, prog=None):
    """the `__main__` of an entry point: parse the flags, call main(cfg), print user mistakes as one line"""
    try:
        return main(parse_args(sys.argv[1:] if argv is None else argv, cls, prog=prog, doc=doc))
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Stopped as e:
        print(f"stopped: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


def run_command(commands, doc="", argv=None):
    """`python prog.py <command> --name=value ...`; commands = {name: (main, Config class, one-line help)}"""
    argv = sys.argv[1:] if argv is None else argv
    prog = sys.argv[0].split("/")[-1]
    listing = "\n".join(f"  {name:<12} {text}" for name, (_, _, text) in commands.items())
    usage = f"usage: python {prog} <command> [--name=value ...]\n\n{doc.strip()}\n\ncommands:\n{listing}\n\n" \
            f"python {prog} <command> --help lists a command's flags"
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        sys.exit(0 if argv else 2)
    if argv[0] not in commands:
        close = difflib.get_close_matches(argv[0], list(commands), n=1)
        print(f"error: unknown command {argv[0]!r}{f'; did you mean {close[0]}?' if close else ''} "
              f"(one of {', '.join(commands)})", file=sys.stderr)
        sys.exit(2)
    main, cls, _ = commands[argv[0]]
    return run(main, cls, doc, argv[1:], prog=f"{prog} {argv[0]}")
