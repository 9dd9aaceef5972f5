"""Black-box attacks: the attacker only queries the model (scores or labels)."""
import advlab.attacks.blackbox.autozoom  # noqa: F401
import advlab.attacks.blackbox.bandits  # noqa: F401
import advlab.attacks.blackbox.boundary  # noqa: F401
import advlab.attacks.blackbox.genetic  # noqa: F401
import advlab.attacks.blackbox.geoda  # noqa: F401
import advlab.attacks.blackbox.hopskipjump  # noqa: F401
import advlab.attacks.blackbox.nes  # noqa: F401
import advlab.attacks.blackbox.onepixel  # noqa: F401
import advlab.attacks.blackbox.pixle  # noqa: F401
import advlab.attacks.blackbox.signopt  # noqa: F401
import advlab.attacks.blackbox.simba  # noqa: F401
import advlab.attacks.blackbox.spatial  # noqa: F401
import advlab.attacks.blackbox.spsa  # noqa: F401
import advlab.attacks.blackbox.square  # noqa: F401
import advlab.attacks.blackbox.substitute  # noqa: F401
import advlab.attacks.blackbox.zoo_attack  # noqa: F401
from advlab.attacks.blackbox.oracle import BlackBoxAttack, Oracle, as_oracle  # noqa: F401
