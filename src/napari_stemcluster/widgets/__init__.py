"""napari dock widgets for the clustering workflow.

Prefilter -> Similarity & mask -> Clustering, with a linked diffraction
viewer and hand correction of the labels. Heavy work runs in background
threads with a progress bar and a Cancel button; results appear as layers.
"""

from ._bragg import BraggWidget
from ._clustering import ClusteringWidget
from ._correction import CorrectionWidget
from ._diffraction import DiffractionViewer
from ._kinetics import KineticsWidget
from ._orientation import OrientationWidget
from ._prefilter import PrefilterWidget
from ._similarity import SimilarityWidget
from ._state import ClusterState
from ._workflow import WORKFLOW_TABS, WorkflowDock, register_tab

__all__ = [
    "WORKFLOW_TABS",
    "BraggWidget",
    "ClusterState",
    "ClusteringWidget",
    "CorrectionWidget",
    "DiffractionViewer",
    "KineticsWidget",
    "OrientationWidget",
    "PrefilterWidget",
    "SimilarityWidget",
    "WorkflowDock",
    "register_tab",
]
