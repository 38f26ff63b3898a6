from .loss_metrics import ClsTestLoss, SegTestLoss

__all__ = ['ClsTestLoss', 'SegTestLoss']
