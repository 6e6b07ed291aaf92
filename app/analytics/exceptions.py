from app.core.errors import InvalidRequest


class WindowOutOfOrder(InvalidRequest):
    title = "start must be before end"
    loc = ("query", "start")


class WindowTooLong(InvalidRequest):
    title = "The window may span at most 366 UTC days"
    loc = ("query", "end")


class TeamFilterNeedsTeamGroup(InvalidRequest):
    title = "team_id narrows only group_by=team or group_by=member"
    loc = ("query", "team_id")
