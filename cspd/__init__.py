"""cspd: a Container Storage Provider on LVM thin pools and the LIO iSCSI target."""

__version__ = "0.1.0"
