from app.core.errors import Conflict, Forbidden, NotFound


class TeamNotFound(NotFound):
    slug = "team_not_found"
    title = "No such team"


class TeamExists(Conflict):
    slug = "team_exists"
    title = "A team with this id already exists (or existed: deleted ids are not reused)"


class TeamHasOpenTransactions(Conflict):
    slug = "team_has_open_transactions"
    title = "The team has pending transactions; complete them or let them expire first"


class TeamMemberNotFound(NotFound):
    slug = "team_member_not_found"
    title = "The user is not a member of this team"


class NotATeamMember(Forbidden):
    slug = "not_a_team_member"
    title = "The user is not a member of this team, so it cannot charge the team's account"
