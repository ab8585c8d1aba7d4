"""The C backend: a portable C11 library computing a pipeline's class and verdict."""

from homunculus.targets.c.build import CompileError, compile_executable, compile_shared
from homunculus.targets.c.codegen import ABI_VERSION, emit_c
from homunculus.targets.c.profiles import CProfile
from homunculus.targets.c.target import CTarget
from homunculus.targets.c.twin import CLibrary, reference

__all__ = [
    "ABI_VERSION",
    "CLibrary",
    "CProfile",
    "CTarget",
    "CompileError",
    "compile_executable",
    "compile_shared",
    "emit_c",
    "reference",
]
