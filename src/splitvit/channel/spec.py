"""What a channel is, from the ``channel=`` config group: one frozen value both sides can compare."""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("ideal", "awgn", "rayleigh", "bit_errors", "packet_loss")
DIRECTIONS = ("up", "down", "both")
POWERS = ("sample", "token", "research")
CSI = ("perfect", "none")
MAX_SNR_DB = 100.0  # beyond this the noise is below float32's resolution of the signal


@dataclass(frozen=True)
class ChannelSpec:
    """``kind`` and its parameters; see the docs' "Noisy and lossy channels" (docs/how-to/channels.md) for the formulas."""

    kind: str = "ideal"
    direction: str = "both"
    eval: bool = False
    snr_db: tuple[float, float] = (10.0, 10.0)  # lo == hi: a fixed SNR; else drawn uniformly per message
    power: str = "sample"
    csi: str = "perfect"
    ber: float = 0.0
    loss: float = 0.0
    arq: bool = True
    packet_bytes: int = 1400

    def __post_init__(self) -> None:
        _choice("channel", self.kind, KINDS)
        _choice("channel.direction", self.direction, DIRECTIONS)
        _choice("channel.power", self.power, POWERS)
        _choice("channel.csi", self.csi, CSI)
        lo, hi = self.snr_db
        if not -MAX_SNR_DB <= lo <= hi <= MAX_SNR_DB:
            raise ValueError(f"channel.snr_db must be a number or a range [lo, hi] with lo <= hi, in "
                             f"[-{MAX_SNR_DB:g}, {MAX_SNR_DB:g}] dB; got {list(self.snr_db)}")
        if not 0.0 <= self.ber <= 0.5:
            raise ValueError(f"channel.ber={self.ber!r} must be in [0, 0.5] (0.5 is a coin flip per bit)")
        if not 0.0 <= self.loss < 1.0:
            raise ValueError(f"channel.loss={self.loss!r} must be in [0, 1): the probability that a packet is lost")
        if not isinstance(self.packet_bytes, int) or not 8 <= self.packet_bytes <= 1 << 20:
            raise ValueError(f"channel.packet_bytes={self.packet_bytes!r} must be an integer in [8, 1048576]")

    @property
    def ideal(self) -> bool:
        """Whether the channel is the ideal one (bit-exact)."""
        return self.kind == "ideal"

    def hits(self, kind: str, direction: str) -> bool:
        """Whether a message of ``kind`` (the request's: ``train`` or ``eval``) going ``direction`` passes through it."""
        if self.ideal or self.direction not in (direction, "both"):
            return False
        return kind == "train" or (kind == "eval" and self.eval)

    @classmethod
    def from_config(cls, channel) -> "ChannelSpec":
        """The ``channel`` config node (absent or ``None``: ideal). ``ValueError`` names the bad key."""
        if channel is None:
            return cls()
        get = channel.get
        snr = get("snr_db", 10.0)
        if isinstance(snr, (int, float)) and not isinstance(snr, bool):
            snr = (float(snr), float(snr))
        elif hasattr(snr, "__len__") and len(snr) == 2 and all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in snr):
            snr = (float(snr[0]), float(snr[1]))
        else:
            raise ValueError(f"channel.snr_db={snr!r} must be a number of dB or a range [lo, hi]")
        for key in ("eval", "arq"):
            if not isinstance(get(key, True), bool):
                raise ValueError(f"channel.{key}={get(key)!r} must be true or false")
        return cls(kind=get("name", "ideal"), direction=get("direction", "both"), eval=get("eval", False), snr_db=snr,
                   power=get("power", "sample"), csi=get("csi", "perfect"), ber=float(get("ber", 0.0)),
                   loss=float(get("loss", 0.0)), arq=get("arq", True), packet_bytes=get("packet_bytes", 1400))


def _choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)}")
