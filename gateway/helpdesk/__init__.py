"""Hand-off of processed mail to the helpdesk agents work in ([helpdesk])."""
