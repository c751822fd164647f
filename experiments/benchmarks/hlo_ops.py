"""The instructions of an optimised HLO module (XLA's ``*after_optimizations.txt`` dump): for each instruction of
the entry computation, the source op it came from (``op_name`` metadata, e.g. ``jit(step)/transpose(jvp(MMDiT))/
transformer_blocks_3/ff/proj_in/dot_general``) and the FLOPs of the products inside it (``2 * |output| * |contracted|``
per ``dot`` / ``convolution``, fusions included). Lets ``trace_summary`` name each traced op and its FLOP rate.
"""

from __future__ import annotations

import math
import re

_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) .*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\w+)\[([\d,]*)\]\S* ([\w\-]+)\((.*)$")


def _parse(text: str) -> tuple[str, dict[str, dict[str, tuple[list[int], str, str]]]]:
    """``(entry name, {computation: {instruction: (shape, opcode, rest of line)}})``."""
    computations: dict[str, dict[str, tuple[list[int], str, str]]] = {}
    entry, current = "", None
    for line in text.splitlines():
        m = _COMPUTATION.match(line)
        if m:
            current = computations.setdefault(m.group(1), {})
            entry = m.group(1) if line.startswith("ENTRY") else entry
            continue
        m = _INSTRUCTION.match(line) if current is not None else None
        if m:
            name, _, dims, opcode, rest = m.groups()
            current[name] = ([int(d) for d in dims.split(",") if d], opcode, rest)
    return entry, computations


def _flops(computations: dict, name: str, instruction: tuple[list[int], str, str]) -> int:
    shape, opcode, rest = instruction
    if opcode in ("dot", "convolution"):
        lhs = computations[name][re.findall(r"%([\w.\-]+)", rest)[0]][0]
        if opcode == "dot":
            contracted = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
            k = math.prod(lhs[int(i)] for i in contracted.group(1).split(",") if i) if contracted else 1
        else:  # window elements x input features: the lhs' non-batch, non-spatial extent
            window = re.search(r"window=\{size=([\dx]+)", rest)
            k = math.prod(int(s) for s in window.group(1).split("x")) * lhs[-1] if window else lhs[-1]
        return 2 * math.prod(shape) * k
    called = re.search(r"calls=%([\w.\-]+)", rest)
    if called and called.group(1) in computations:
        inner = computations[called.group(1)]
        return sum(_flops(computations, called.group(1), ins) for ins in inner.values())
    return 0


def hlo_ops(text: str) -> dict[str, tuple[str, int]]:
    """``{instruction name: (source op, FLOPs)}`` for the entry computation of an optimised HLO module's text."""
    entry, computations = _parse(text)
    ops = {}
    for name, instruction in computations.get(entry, {}).items():
        source = re.search(r'op_name="([^"]*)"', instruction[2])
        ops[name] = (source.group(1) if source else "", _flops(computations, entry, instruction))
    return ops
