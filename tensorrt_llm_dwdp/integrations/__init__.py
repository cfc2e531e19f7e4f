"""Thin adapters that let serving engines call DWDP through the hook API (`hooks.DwdpHooks`)."""
