"""HubSpot: portals, lists, contacts and their flag properties."""
