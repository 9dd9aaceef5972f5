"""Attacks: white-box, score-based and label-only, all behind one contract (see base.py)."""
from advlab.attacks import blackbox  # noqa: F401
from advlab.attacks.apgd import APGD, APGDT, AdaptiveEnsemble, AutoAttack  # noqa: F401
from advlab.attacks.base import (  # noqa: F401
    Attack,
    AttackResult,
    Crafted,
    Taxonomy,
    available,
    choose_target,
    get,
    is_success,
    register,
)
from advlab.attacks.cw import CarliniWagnerL2, CarliniWagnerLinf  # noqa: F401
from advlab.attacks.ddn import DDN  # noqa: F401
from advlab.attacks.deepfool import DeepFool  # noqa: F401
from advlab.attacks.ead import EAD  # noqa: F401
from advlab.attacks.eot import EOTPGD, eot  # noqa: F401
from advlab.attacks.fab import FAB, FABT  # noqa: F401
from advlab.attacks.fmn import FMN  # noqa: F401
from advlab.attacks.gradient import BIM, FGSM, MIFGSM, PGD, GradientAttack  # noqa: F401
from advlab.attacks.jsma import JSMA  # noqa: F401
from advlab.attacks.lbfgs import LBFGS  # noqa: F401
from advlab.attacks.patch import AdversarialPatch  # noqa: F401
from advlab.attacks.sparsefool import SparseFool  # noqa: F401
from advlab.attacks.stadv import StAdv  # noqa: F401
from advlab.attacks.transfer import Ensemble, TransferAttack  # noqa: F401
from advlab.attacks.universal import UniversalPerturbation  # noqa: F401
