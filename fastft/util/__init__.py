"""Small pieces every part of fastft uses, torch-free: the machine's resources and the ``FASTFT_*`` environment
contract (:mod:`.env`)."""
