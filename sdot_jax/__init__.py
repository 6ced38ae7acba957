"""sdot_jax: exact semi-discrete optimal transport in pure JAX."""

from .api import NotConvergedError as NotConvergedError
from .distance import distance as distance
from .api import optimal_transport_plan as optimal_transport_plan
from .compilation_cache import enable_compilation_cache as enable_compilation_cache
from .geometry.diagram import Capacities as Capacities
from .measures import AbstractDensity as AbstractDensity
from .measures import Box as Box
from .measures import ConvexHull as ConvexHull
from .measures import Image as Image
from .measures import Mesh as Mesh
from .measures import PolynomialGrid as PolynomialGrid
from .measures import Polytope as Polytope
from .measures import SplineGrid as SplineGrid
from .measures import SumOfGaussians as SumOfGaussians
from .measures import SumOfDiracs as SumOfDiracs
from .plan import BackwardMap as BackwardMap
from .plan import Cells as Cells
from .plan import TransportPlan as TransportPlan
from .solve.newton import SolveStats as SolveStats
from .solve.newton import Status as Status

__version__ = "0.1.0"
