from app.core.errors import Conflict, NotFound


class UserNotFound(NotFound):
    slug = "user_not_found"
    title = "No such user"


class UserExists(Conflict):
    slug = "user_exists"
    title = "A user with this id already exists"


class UserHasOpenTransactions(Conflict):
    slug = "user_has_open_transactions"
    title = "The user has pending transactions; complete them or let them expire first"
