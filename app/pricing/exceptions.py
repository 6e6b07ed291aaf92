from app.core.errors import InvalidRequest, NotFound


class UnknownModel(InvalidRequest):
    slug = "unknown_model"
    title = "No price for this model and no _default price"
    loc = ("body", "model")


class CostTooLarge(InvalidRequest):
    slug = "cost_too_large"
    title = "The computed cost exceeds 15 integer digits"
    loc = ("body",)


class ModelNotFound(NotFound):
    slug = "model_not_found"
    title = "No such model"


class ExpressionFailed(InvalidRequest):
    """The usage sent cannot be priced by the model's expression (e.g. a division by zero for
    these counts): nothing was changed."""

    slug = "expression_evaluation_failed"
    title = "The model's price expression cannot price this usage"
    loc = ("body",)
