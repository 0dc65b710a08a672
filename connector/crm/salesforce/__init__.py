"""Salesforce: orgs, campaigns, SOQL segments, Contact and Lead flag fields."""
