"""The MIG profile string grammar of mig-parted configs: `3g.40gb`, `1c.3g.40gb`, `1g.10gb+me`.

`<g>g.<gb>gb` is a GPU instance with one full-size compute instance; `<c>c.<g>g.<gb>gb` a
compute instance of `c` slices inside a `g`-slice GPU instance. An attribute suffix is
`+attr[,attr…]` or a single negative `-attr` (go-nvlib's rules). Config names spell `+` as
`.` (`all-1g.10gb.me`), which `config_name_for` reproduces. Zero sizes (`0g.0gb`) are
well-formed, as mig-parted's own tests write them; no GPU offers such a profile, so applying
one is refused where the config meets a GPU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PROFILE = re.compile(
    r"^(?:(?P<c>[1-9][0-9]*)c\.)?(?P<g>0|[1-9][0-9]*)g\.(?P<gb>0|[1-9][0-9]*)gb"
    r"(?:(?P<sign>[+-])(?P<attrs>.+))?$"
)
_ATTRIBUTE = re.compile(r"^[A-Za-z][A-Za-z0-9.]*$")


@dataclass(frozen=True, slots=True, order=True)
class MigProfileName:
    """A parsed profile string. `compute_slices` equals `gpu_slices` for a full-size CI."""

    gpu_slices: int
    memory_gb: int
    compute_slices: int
    attributes: str = ""  # "", "+me", "+me.all", "-me", "+gfx", …

    @property
    def gpu_instance(self) -> str:
        """The GPU-instance part: `3g.40gb+me`."""
        return f"{self.gpu_slices}g.{self.memory_gb}gb{self.attributes}"

    @property
    def full(self) -> bool:
        return self.compute_slices == self.gpu_slices

    def __str__(self) -> str:
        gi = self.gpu_instance
        return gi if self.full else f"{self.compute_slices}c.{gi}"


def parse_profile(text: str) -> MigProfileName:
    """Parse a profile string, or raise ValueError saying what is wrong with it."""
    match = _PROFILE.fullmatch(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not a MIG profile: expected <g>g.<gb>gb or <c>c.<g>g.<gb>gb, "
            "optionally with +attr (e.g. 3g.40gb, 1c.3g.40gb, 1g.10gb+me)"
        )
    g, gb = int(match["g"]), int(match["gb"])
    c = int(match["c"]) if match["c"] else g
    if c > g:
        raise ValueError(f"{text!r}: a compute instance ({c}c) cannot exceed its GPU instance "
                         f"({g}g)")
    attributes = ""
    if match["sign"]:
        names = match["attrs"].split(",")
        if match["sign"] == "-" and len(names) != 1:
            raise ValueError(f"{text!r}: a negative attribute names exactly one attribute")
        for name in names:
            if not _ATTRIBUTE.fullmatch(name) or name.endswith("."):
                raise ValueError(
                    f"{text!r}: attribute {name!r} must be letters, digits and dots, start "
                    "with a letter and not end with a dot"
                )
        if len(set(names)) != len(names):
            raise ValueError(f"{text!r}: attributes must be unique")
        attributes = match["sign"] + ",".join(names)
    return MigProfileName(gpu_slices=g, memory_gb=gb, compute_slices=c, attributes=attributes)


def config_name_for(profile: str) -> str:
    """The `all-<profile>` config name mig-parted uses for a profile (`+` becomes `.`)."""
    return "all-" + profile.replace("+", ".")
