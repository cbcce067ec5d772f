"""What the link does to what it carries: ideal (bit-exact), AWGN and Rayleigh fading on analog
payloads, bit errors on digital payloads, packet loss with or without retransmission. See the
docs' "Noisy and lossy channels" (docs/how-to/channels.md) for every model's formula."""

from .mod import ANALOG, DIGITAL, PROTECTED, ROLES, Channel, channel_metrics, combined, erasures, idle, lenient
from .receive import Receiver
from .physics import analog, bpsk_error_rate, flip_bits, packet_losses, q_function, rayleigh_gains, signal_power
from .spec import KINDS, ChannelSpec

__all__ = ["ANALOG", "DIGITAL", "KINDS", "PROTECTED", "ROLES", "Channel", "ChannelSpec", "Receiver", "channel_metrics", "combined", "analog", "bpsk_error_rate",
           "erasures", "flip_bits", "idle", "lenient", "packet_losses", "q_function", "rayleigh_gains", "signal_power"]
