from ._density import AbstractDensity as AbstractDensity
from .box import Box as Box
from .diracs import SumOfDiracs as SumOfDiracs
